"""The README's promises: two set-up commands first, CI calls the test one, the DTME snippet runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


def test_readme_holds_the_bring_your_own_model_example_verbatim():
    text = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "dtme_own_model.py").read_text()
    assert f"```python\n{example}```" in text
