"""Magnitude pruning of a trained model with torch.nn.utils.prune, made permanent.

Which weights: every Conv1d/2d/3d and Linear weight (the text encoder's too), except the classifier
layers that produce the logits (a pruned output row there would silence a class). Embedding tables,
norms and biases are left as they are.

- unstructured (variant pruneN): of all those layers' weights together, the N% of smallest |w| set to 0
  (global magnitude pruning: layers with many small weights give more; measured on fsdd-mnist after one epoch,
  50% lost 1 point this way and 32 points when every layer gave 50%, its small first convolutions included);
- structured (pruneN-structured): in each layer the N% of output channels (Conv) or output rows
  (Linear) of smallest L2 norm set to 0, their biases too, so each such channel's output is a constant 0.

Shapes never change: a pruned model is a checkpoint of the same task, usable as `initial-model` of a
federation, read by every mmfed command. Dense files and dense runtimes hold and multiply the zeros as
any other value, so pruning alone makes neither the file smaller nor inference faster; it makes the
file compress (see the report's compressed size) and prepares a model for a sparse runtime.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from mmfed.errors import MMFedError
from mmfed.use.variant_names import Pruning

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def classifier_layers(model: nn.Module, num_classes: int) -> set[str]:
    """The fusion head's Linear layers that produce the logits (num_classes outputs)."""
    fusion = getattr(model, "fusion", model)
    prefix = "fusion." if fusion is not model else ""
    return {
        prefix + name
        for name, module in fusion.named_modules()
        if isinstance(module, nn.Linear) and module.out_features == num_classes
    }


def prunable_layers(model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
    keep = classifier_layers(model, num_classes)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE) and name not in keep
    }


def prune_model(model: nn.Module, pruning: Pruning, num_classes: int) -> nn.Module:
    """A pruned copy of `model` (the original is untouched); the masks are folded into the weights."""
    pruned = copy.deepcopy(model)
    amount = pruning.percent / 100
    layers = list(prunable_layers(pruned, num_classes).values())
    if not layers:
        raise MMFedError("the model has no Conv or Linear layer to prune besides its classifier")
    if not pruning.structured:
        prune.global_unstructured([(m, "weight") for m in layers], prune.L1Unstructured, amount=amount)
    for module in layers:
        if pruning.structured:
            prune.ln_structured(module, "weight", amount=amount, n=2, dim=0)
            if module.bias is not None:
                rows = module.weight_mask.flatten(1).amax(dim=1)  # 0 where an output channel is pruned
                prune.custom_from_mask(module, "bias", rows)
                prune.remove(module, "bias")
        prune.remove(module, "weight")
    return pruned.eval()


@torch.no_grad()
def sparsity(model: nn.Module, num_classes: int) -> dict[str, float | int]:
    """Zeros counted: in the pruned layers' weights, and in all parameters of the model."""
    layers = prunable_layers(model, num_classes).values()
    weights = [m.weight for m in layers]
    pruned_total = sum(w.numel() for w in weights)
    pruned_zeros = sum(int((w == 0).sum()) for w in weights)
    per_layer = [int((w == 0).sum()) / w.numel() for w in weights]
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    zeros = sum(int((p == 0).sum()) for p in params)
    return {
        "pruned_layers": len(weights),
        "pruned_weights": pruned_total,
        "pruned_layer_sparsity": pruned_zeros / max(pruned_total, 1),
        "least_sparse_layer": min(per_layer, default=0.0),
        "most_sparse_layer": max(per_layer, default=0.0),
        "parameters": total,
        "model_sparsity": zeros / max(total, 1),
    }
