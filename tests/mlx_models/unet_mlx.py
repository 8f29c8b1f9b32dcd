"""A small diffusion UNet in MLX (after the Stable Diffusion UNet of mlx-examples): residual
blocks with GroupNorm and a time embedding, self-attention over the pixels, strided
downsampling, nearest-neighbour upsampling and skip connections."""

import mlx.core as mx
import mlx.nn as nn


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, time_dims, groups=4):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, pytorch_compatible=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(time_dims, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, pytorch_compatible=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Linear(in_channels, out_channels)

    def __call__(self, x, temb):
        y = self.conv1(nn.silu(self.norm1(x)))
        y = y + self.time_emb_proj(nn.silu(temb))[:, None, None, :]
        y = self.conv2(nn.silu(self.norm2(y)))
        if "conv_shortcut" in self:
            x = self.conv_shortcut(x)
        return x + y


class AttentionBlock(nn.Module):
    def __init__(self, dims, num_heads=2, groups=4):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, dims, pytorch_compatible=True)
        self.attention = nn.MultiHeadAttention(dims, num_heads, bias=True)

    def __call__(self, x):
        B, H, W, C = x.shape
        y = self.group_norm(x).reshape(B, H * W, C)
        y = self.attention(y, y, y)
        return x + y.reshape(B, H, W, C)


class UNet(nn.Module):
    def __init__(self, in_channels=3, channels=(8, 16), time_dims=16):
        super().__init__()
        c0, c1 = channels
        self.timesteps = nn.SinusoidalPositionalEncoding(time_dims, cos_first=True, full_turns=True)
        self.time_mlp = [nn.Linear(time_dims, time_dims), nn.Linear(time_dims, time_dims)]
        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=1)
        self.down = [ResnetBlock(c0, c0, time_dims), ResnetBlock(c0, c1, time_dims)]
        self.downsample = nn.Conv2d(c1, c1, kernel_size=3, stride=2, padding=1)
        self.mid_block = ResnetBlock(c1, c1, time_dims)
        self.mid_attention = AttentionBlock(c1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_conv = nn.Conv2d(c1, c1, kernel_size=3, padding=1)
        self.up = [ResnetBlock(2 * c1, c1, time_dims), ResnetBlock(c1 + c0, c0, time_dims)]
        self.norm_out = nn.GroupNorm(4, c0, pytorch_compatible=True)
        self.conv_out = nn.Conv2d(c0, in_channels, kernel_size=3, padding=1)

    def __call__(self, x, t):
        temb = self.timesteps(t)
        temb = self.time_mlp[1](nn.silu(self.time_mlp[0](temb)))

        x = self.conv_in(x)
        skips = []
        for block in self.down:
            x = block(x, temb)
            skips.append(x)
        x = self.downsample(x)

        x = self.mid_block(x, temb)
        x = self.mid_attention(x)

        x = self.up_conv(self.upsample(x))
        for block in self.up:
            x = mx.concatenate([x, skips.pop()], axis=-1)
            x = block(x, temb)
        return self.conv_out(nn.silu(self.norm_out(x)))


def build():
    return UNet()


def example_inputs(rng):
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    t = rng.uniform(0, 1, (2,)).astype("float32")
    return x, t
