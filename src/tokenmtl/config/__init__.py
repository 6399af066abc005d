"""Experiment configs: typed sections declared once (`schema.py`), YAML files, `--set key=value`.

Every key a run reads is declared in `tokenmtl.config.schema`, so a typo is an error that lists
the valid keys instead of a silently ignored setting. `benchmark` and `method` sections take the
extra keys their benchmark or method accepts; those are checked where the object is built.
"""

from tokenmtl.config.loading import (
    PACKAGED_CONFIGS,
    apply_overrides,
    dump_config,
    load_config,
    merge,
    parse_assignment,
    read_config_file,
    read_yaml,
    resolve_config_path,
)
from tokenmtl.config.resolved import Config, validate
from tokenmtl.config.schema import OPEN_SECTIONS, SECTIONS, defaults
from tokenmtl.config.sections import ConfigError, Section
from tokenmtl.config.show import annotated_yaml

DEFAULTS = defaults()

__all__ = [
    "Config",
    "ConfigError",
    "DEFAULTS",
    "OPEN_SECTIONS",
    "PACKAGED_CONFIGS",
    "SECTIONS",
    "Section",
    "annotated_yaml",
    "apply_overrides",
    "defaults",
    "dump_config",
    "load_config",
    "merge",
    "parse_assignment",
    "read_config_file",
    "read_yaml",
    "resolve_config_path",
    "validate",
]
