"""Swap PyTorch's ConvTranspose3d for tconv3d's in an existing model, keeping its weights
======================================================================================

Run:  python examples/torch_dropin.py
"""
import copy
import io

import torch

import tconv3d.torch


def decoder():
    """A small 3D U-Net-style decoder: k2 s2 up-sampling, each followed by a Conv3d."""
    return torch.nn.Sequential(
        torch.nn.ConvTranspose3d(32, 16, kernel_size=2, stride=2), torch.nn.ReLU(),
        torch.nn.Conv3d(16, 16, kernel_size=3, padding=1), torch.nn.ReLU(),
        torch.nn.ConvTranspose3d(16, 8, kernel_size=2, stride=2), torch.nn.ReLU(),
    )


def main(side=12):
    torch.manual_seed(0)
    trained = decoder()  # stands for a model whose weights came from training
    checkpoint = io.BytesIO()
    torch.save(trained.state_dict(), checkpoint)

    # 1. Convert the model in place: the ConvTranspose3d modules keep their parameters
    #    (the same Parameter objects), hooks and parametrizations, so state_dict keys and
    #    optimizers are unchanged. report=True also says what was converted or skipped.
    model, report = tconv3d.torch.convert(copy.deepcopy(trained), report=True)
    print(report)
    print("converted:", [f"{type(m).__module__}.{type(m).__name__}" for m in model])

    # 2. Or build the tconv3d module directly and load a PyTorch checkpoint into it.
    checkpoint.seek(0)
    state = torch.load(checkpoint)
    up = tconv3d.torch.ConvTranspose3d(32, 16, kernel_size=2, stride=2)
    up.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("0.")})

    # 3. Same numbers, in either memory format (channels_last_3d in -> channels_last_3d out).
    x = torch.randn(2, 32, side, side, side).to(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        y_torch, y = trained(x), model(x)
        difference = max((y - y_torch).abs().max().item(),
                         (up(x) - trained[0](x)).abs().max().item())
    print(f"output {tuple(y.shape)}, channels_last_3d: "
          f"{y.is_contiguous(memory_format=torch.channels_last_3d)}")
    print(f"largest difference from PyTorch: {difference:.2e}")
    print("timings: python benchmarks/bench_torch_unet.py")

    # 4. Training works as before: gradients flow through tconv3d's backward.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model(x).square().mean()
    loss.backward()
    optimizer.step()
    print(f"one training step, loss {loss.item():.4f}")

    # 5. Second derivatives too: a gradient penalty on the input (as in WGAN-GP).
    x = x.detach().requires_grad_()
    y = model(x)
    (grad_x,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    penalty = (grad_x.flatten(1).norm(dim=1) - 1).square().mean()
    (y.mean() + penalty).backward()
    print(f"gradient penalty {penalty.item():.4f}, backpropagated through tconv3d")
    return difference


if __name__ == "__main__":
    main()
