"""Quick look at a training checkpoint: EMA weights into the shipped pipeline shell, 16 samples, swap locality.

    python scripts/quick_check_checkpoint.py runs/s11/interp-gentle/checkpoint-600 outputs/q-gentle 8
"""
import json, os, sys
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)
import evaluate as ev
from diffusers import UNet2DModel
from pipeline_interpretable_ddpm import InterpretableDDPMPipeline

ckpt, out_dir = sys.argv[1], sys.argv[2]
pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 8
pipe = InterpretableDDPMPipeline.from_pretrained("models/ddpm-faces64-baseline", trust_remote_code=True)
src = os.path.join(ckpt, "unet_ema") if os.path.isdir(os.path.join(ckpt, "unet_ema")) else os.path.join(ckpt, "unet")
unet = UNet2DModel.from_pretrained(src)
pipe.unet.load_state_dict(unet.state_dict())
pipe.unet.float()
os.makedirs(out_dir, exist_ok=True)
with torch.no_grad():
    lat = ev.seeded_latents(pipe.latent_shape, 0, "fid", list(range(16)))
    imgs = pipe(latents=lat, num_inference_steps=20, output_type="pt").images
    ev.save_image_grid(ev.to_uint8(imgs), os.path.join(out_dir, "samples.png"), ncol=8)
    res = ev.evaluate_locality(pipe, ["eyes", "nose", "mouth"], pairs, 0, num_inference_steps=20, batch_size=pairs)
summary = {c: round(res["swap"][c]["lab/paper"]["mean"], 4) for c in ["eyes", "nose", "mouth"]}
print(json.dumps({"ckpt": ckpt, "swap_lab_paper": summary}))
json.dump(summary, open(os.path.join(out_dir, "locality.json"), "w"))
