"""A convolutional audio autoencoder with an LSTM bottleneck in MLX (after EnCodec in
mlx-examples): causal strided Conv1d encoder with ELU, residual LSTM, ConvTranspose1d decoder."""

import mlx.core as mx
import mlx.nn as nn


class CausalConv1d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1):
        super().__init__()
        self.padding = kernel_size - stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride)

    def __call__(self, x):
        x = mx.pad(x, [(0, 0), (self.padding, 0), (0, 0)])
        return self.conv(x)


class ResidualUnit(nn.Module):
    def __init__(self, dims, dilation=1):
        super().__init__()
        self.act = nn.ELU()
        self.conv1 = nn.Conv1d(dims, dims // 2, kernel_size=3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(dims // 2, dims, kernel_size=1)

    def __call__(self, x):
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class EncodecLSTM(nn.Module):
    def __init__(self, dims, num_layers=2):
        super().__init__()
        self.lstm = [nn.LSTM(dims, dims) for _ in range(num_layers)]

    def __call__(self, x):
        skip = x
        for layer in self.lstm:
            x, _ = layer(x)
        return x + skip


class AudioAutoencoder(nn.Module):
    def __init__(self, channels=1, dims=8, ratios=(2, 2), latent=16):
        super().__init__()
        encoder = [CausalConv1d(channels, dims, 7)]
        for ratio in ratios:
            encoder.append(ResidualUnit(dims))
            encoder.append(nn.ELU())
            encoder.append(CausalConv1d(dims, 2 * dims, 2 * ratio, stride=ratio))
            dims *= 2
        self.encoder = nn.Sequential(*encoder)
        self.lstm = EncodecLSTM(dims)
        self.to_latent = nn.Conv1d(dims, latent, kernel_size=3, padding=1)
        self.from_latent = nn.Conv1d(latent, dims, kernel_size=3, padding=1)
        decoder = []
        for ratio in reversed(ratios):
            decoder.append(nn.ELU())
            decoder.append(nn.ConvTranspose1d(dims, dims // 2, 2 * ratio, stride=ratio,
                                              padding=ratio // 2))
            dims //= 2
            decoder.append(ResidualUnit(dims))
        decoder.append(nn.ELU())
        decoder.append(nn.Conv1d(dims, channels, kernel_size=7, padding=3))
        self.decoder = nn.Sequential(*decoder)

    def __call__(self, x):
        z = self.to_latent(self.lstm(self.encoder(x)))
        return mx.tanh(self.decoder(self.from_latent(z)))


def build():
    return AudioAutoencoder()


def example_inputs(rng):
    return (rng.standard_normal((2, 32, 1)).astype("float32"),)
