"""Random weights for conversion tests: every tensor distinct, so each must land in its own place."""
import torch


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every parameter and BatchNorm buffer of ``model`` (a shared parameter stays shared).

    Models initialise many tensors to constants (LayerNorm 1/0, frozen BatchNorm as the identity,
    attention_weights 0, the last box layer 0): a conversion that swapped two of them would still
    match. After this every tensor is distinct, so each one must land in its own place.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for module in model.modules():
            if hasattr(module, "running_var") and hasattr(module, "running_mean"):
                n = module.running_var.numel()
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
