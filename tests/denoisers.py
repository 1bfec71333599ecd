"""Small noise predictors with known structure, as proper diffusers models (``.sample`` outputs, ``config``, ``dtype``).

- `PerPixelDenoiser`: wraps conftest's 1x1-convolution `PerPixelUNet`; exactly local, so every dummy-player loss and
  every off-diagonal Shapley value is zero for it.
- `GaussianDenoiser`: the optimal noise predictor for per-pixel Gaussian data N(mean, std^2), plus an optional small
  3x3 convolution that mixes neighbouring pixels. Unlike a random UNet (whose DDIM trajectories are chaotic, because
  x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a) amplifies any unstructured eps), it has the tame dynamics of a trained model,
  so DDIM inversion is well posed and its error can be bounded in a test.
- `GaussianPosteriorDenoiser`: the same data model written as its exact posterior mean E[x_0 | x_t], in any
  parametrisation (epsilon, v or sample) of any schedule, zero terminal SNR included: one denoiser, several UNet
  outputs, so anything the pipeline computes from "the prediction" can be checked not to depend on the choice.
"""

import torch
from diffusers import DDIMScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from conftest import PerPixelUNet


class PerPixelDenoiser(ModelMixin, ConfigMixin):
    """`PerPixelUNet` (1x1 convolutions only) with the interface of `UNet2DModel`."""

    @register_to_config
    def __init__(self, sample_size: int = 16, in_channels: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.inner = PerPixelUNet(sample_size)

    def forward(self, sample: torch.Tensor, timestep) -> UNet2DOutput:
        return UNet2DOutput(sample=self.inner(sample, timestep))


class GaussianDenoiser(ModelMixin, ConfigMixin):
    """eps(x_t, t) = sqrt(1 - a_t) (x_t - sqrt(a_t) mean) / (a_t std^2 + 1 - a_t) + mixing * tanh(conv3x3(x_t))."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        in_channels: int = 3,
        data_std: float = 0.5,
        mixing: float = 0.1,
        num_train_timesteps: int = 1000,
        seed: int = 0,
    ):
        super().__init__()
        scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone())
        self.data_mean = torch.nn.Parameter(torch.tensor([0.3, -0.1, -0.4]).view(1, 3, 1, 1))
        torch.manual_seed(seed)
        self.mix = torch.nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep) -> UNet2DOutput:
        t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
        a = self.alphas_cumprod[t].to(sample.dtype).view(-1, 1, 1, 1)
        var = self.config.data_std**2
        eps = (1 - a).sqrt() * (sample - a.sqrt() * self.data_mean) / (a * var + 1 - a)
        if self.config.mixing:
            eps = eps + self.config.mixing * torch.tanh(self.mix(sample))
        return UNet2DOutput(sample=eps)


def ddim_scheduler(num_train_timesteps: int, prediction_type: str, rescale_betas_zero_snr: bool) -> DDIMScheduler:
    """DDIM's linear schedule, unclipped; with zero terminal SNR, trailing steps (sampling starts at t = T - 1)."""
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=rescale_betas_zero_snr,
        timestep_spacing="trailing" if rescale_betas_zero_snr else "leading",
        clip_sample=False,
    )


class GaussianPosteriorDenoiser(ModelMixin, ConfigMixin):
    """x0(x_t, t) = mean + sqrt(a) std^2 (x_t - sqrt(a) mean) / (a std^2 + 1 - a) + mixing * tanh(conv3x3(x_t)), the
    noise eps = (x_t - sqrt(a) x0) / sqrt(1 - a), output as `prediction_type` ("epsilon": eps, "v_prediction":
    v = sqrt(a) eps - sqrt(1 - a) x0, "sample": x0) for DDIM's linear schedule, rescaled to zero terminal SNR when
    `rescale_betas_zero_snr` (then x0 is finite at t = T - 1, where a = 0: the data mean plus the mixing term)."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        in_channels: int = 3,
        data_std: float = 0.5,
        mixing: float = 0.1,
        prediction_type: str = "v_prediction",
        rescale_betas_zero_snr: bool = True,
        num_train_timesteps: int = 1000,
        seed: int = 0,
    ):
        super().__init__()
        scheduler = ddim_scheduler(num_train_timesteps, prediction_type, rescale_betas_zero_snr)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().double())
        self.data_mean = torch.nn.Parameter(torch.tensor([0.3, -0.1, -0.4]).view(1, 3, 1, 1))
        torch.manual_seed(seed)
        self.mix = torch.nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def make_scheduler(self) -> DDIMScheduler:
        """The DDIM scheduler (unclipped) this denoiser is written for."""
        c = self.config
        return ddim_scheduler(c.num_train_timesteps, c.prediction_type, c.rescale_betas_zero_snr)

    def forward(self, sample: torch.Tensor, timestep) -> UNet2DOutput:
        t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x, mean, var = sample.double(), self.data_mean.double(), self.config.data_std**2
        x0 = mean + a.sqrt() * var * (x - a.sqrt() * mean) / (a * var + 1 - a)
        if self.config.mixing:
            x0 = x0 + self.config.mixing * torch.tanh(self.mix(sample)).double()
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        kind = self.config.prediction_type
        out = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[kind]
        return UNet2DOutput(sample=out.to(sample.dtype))
