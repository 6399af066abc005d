"""Apply DTME-MTL to your own timm model and task heads, with your own training loop."""
import tempfile

import timm
import torch
import torch.nn.functional as F

from tokenmtl.dtme import added_parameters, analyze, expand, make_plan
from tokenmtl.models import DenseHead, MultiTaskModel, TimmViTAdapter

vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=4)
model = MultiTaskModel(TimmViTAdapter(vit), {"seg": DenseHead(192, 5), "depth": DenseHead(192, 1)})
data = [{"image": torch.randn(4, 3, 32, 32), "seg": torch.randint(0, 5, (4, 32, 32)),
         "depth": torch.rand(4, 1, 32, 32)} for _ in range(4)]
loader = torch.utils.data.DataLoader(data, batch_size=None)

def loss_fn(out, batch):
    return {"seg": F.cross_entropy(out["seg"], batch["seg"]), "depth": F.l1_loss(out["depth"], batch["depth"])}

report = analyze(model, loader, loss_fn, num_batches=2)   # token spaces + conflicts per layer
plan = make_plan(report, ratio=0.5)                        # TM/TE on the most conflicted layers
expand(model, plan)                                        # per-task modulators and tokens
optimizer = torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if not n.startswith("trunk.")]},
                               {"params": added_parameters(model), "lr": 1e-3}], lr=1e-4)
for batch in loader:                                       # keep training with your own loop
    loss = sum(loss_fn(model(batch["image"]), batch).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
torch.save({"model": model.state_dict(), "dtme_plan": plan.to_dict()}, f"{tempfile.mkdtemp()}/ckpt.pt")
