#!/usr/bin/python3
"""Exports a torchvision model as a TorchScript module for xtrain (model name `torchscript`).

    /usr/bin/python3 scripts/export_torchvision.py resnet18 resnet18.pt [--weights resnet18-f37072fd.pth]
        [--in-channels 1] [--classes 10] [--seed 0]

--weights   a torchvision state dict (the pretrained file you have; nothing is downloaded). Without it the
            weights are random, from --seed.
--in-channels  the data's channel count. For other than 3, the first convolution's RGB filters are summed
            over their input channels and spread evenly over the new ones (a gray image gives the response
            the RGB filters give to that image in gray).
--classes   replace the classifier head for this many classes (fresh weights). xtrain also replaces a head
            whose output count differs from the job's classes, so this is optional.

The module is saved with torch.jit.script in training mode: BatchNorm and dropout follow xtrain's training
and evaluation. Debian's python3-torchvision provides the architectures.
"""
import argparse
import sys

import torch
import torchvision

MODELS = {"resnet18": torchvision.models.resnet18, "squeezenet1_1": torchvision.models.squeezenet1_1}


def first_conv(model, name):
    """The parent module and attribute name of the model's first convolution."""
    if name == "resnet18":
        return model, "conv1"
    return model.features, "0"


def head(model, name):
    if name == "resnet18":
        return model, "fc"
    return model.classifier, "1"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("out", help="where the TorchScript module goes (.pt)")
    parser.add_argument("--weights", help="a torchvision state dict for this model (pretrained weights)")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=0, help="replace the head for this many classes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = MODELS[args.model]()
    if args.weights:
        state = torch.load(args.weights, map_location="cpu")
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            sys.exit(f"{args.weights} is not a state dict (the dict of tensors torch.save(model.state_dict()) "
                     f"writes): it holds a {type(state).__name__}")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            def some(names):
                return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "") or "none"
            sys.exit(f"{args.weights} does not match torchvision's {args.model}: {len(missing)} missing ({some(missing)}), "
                     f"{len(unexpected)} unexpected ({some(unexpected)})")

    if args.in_channels != 3:
        parent, attr = first_conv(model, args.model)
        conv = getattr(parent, attr)
        new = torch.nn.Conv2d(args.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, conv.bias is not None)
        with torch.no_grad():
            summed = conv.weight.sum(dim=1, keepdim=True)
            new.weight.copy_(summed.repeat(1, args.in_channels, 1, 1) / args.in_channels)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        setattr(parent, attr, new)

    if args.classes > 0:
        parent, attr = head(model, args.model)
        old = getattr(parent, attr)
        if isinstance(old, torch.nn.Linear):
            setattr(parent, attr, torch.nn.Linear(old.in_features, args.classes))
        else:
            setattr(parent, attr, torch.nn.Conv2d(old.in_channels, args.classes, old.kernel_size))

    model.train()
    scripted = torch.jit.script(model)
    scripted.save(args.out)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: torchvision {args.model} ({parameters} parameters, "
          f"{'weights from ' + args.weights if args.weights else 'random weights, seed ' + str(args.seed)}, "
          f"{args.in_channels} input channel(s))")


if __name__ == "__main__":
    main()
