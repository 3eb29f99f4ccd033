"""Child script for tests/test_distributed.py: ``torchrun --nproc_per_node 2 dist_train.py RECIPE_JSON OUT``.

Each process trains (gloo on CPU) and writes its own final weights to OUT/rank<r>.safetensors, so
the test can check that every rank ended with the same model.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from finetunekit import Recipe, train

torch.set_num_threads(1)
recipe = Recipe.from_dict(json.loads(sys.argv[1]))
out = Path(sys.argv[2])
result = train(recipe, output=out / "run", quiet=True)
import os

rank = int(os.environ.get("RANK", "0"))  # the process group may be torn down by end_training
# cloned: tied weights (an encoder-decoder's shared embeddings) share storage, which safetensors refuses
state = {k: v.detach().cpu().clone().contiguous() for k, v in result.model.state_dict().items()}
save_file(state, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps({"world": int(os.environ.get("WORLD_SIZE", "1")), "metrics": result.metrics}))
