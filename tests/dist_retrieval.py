"""Child script for tests/test_retrieval_distributed.py, run by torchrun (two processes, gloo on
CPU) and once alone: ``dist_retrieval.py STEP_RECIPE_JSON TRAIN_RECIPE_JSON OUT``.

1. One step of a tiny dual encoder (both towers run, dropout and BatchNorm in eval mode so that a
   row's embedding does not depend on the rows beside it) on a fixed global batch: each process
   writes the loss and every parameter's gradient after the gradients are averaged.
2. A whole training run (train()), each process writing its final weights.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from finetunekit.retrieval import RetrievalRecipe, distributed
from finetunekit.retrieval.train import _prepare, _step, build_towers, epoch_batches, train

torch.set_num_threads(1)
step_recipe = RetrievalRecipe.from_dict(json.loads(sys.argv[1]))
train_recipe = RetrievalRecipe.from_dict(json.loads(sys.argv[2]))
out = Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)

distributed.setup()
rank = distributed.rank()
torch.manual_seed(0)
model = build_towers(step_recipe)
preprocessing = {"image_tower": model.image.preprocessing(), "text_tower": {"max_length": step_recipe.data.max_length}}
from finetunekit.retrieval.data import read_pairs

pairs = read_pairs(step_recipe.data.train)
data, _ = _prepare(model, pairs, step_recipe, preprocessing, torch.device("cpu"), True, "train")
batch = epoch_batches(pairs, 0, 0, 7)[0]  # 7 rows: the processes embed 4 and 3
model.eval()
loss = _step(model, data, batch, torch.device("cpu"), preprocessing)
loss.backward()
distributed.average_gradients(model)
grads = {n: p.grad.detach().contiguous() for n, p in model.named_parameters() if p.grad is not None}
save_file({"loss": loss.detach().reshape(1), **{f"grad.{n}": g for n, g in grads.items()}}, str(out / f"step{rank}.safetensors"))

result = train(train_recipe, output=out / "run", quiet=True)
state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
save_file(state, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps({"world": int(os.environ.get("WORLD_SIZE", "1"))}))
