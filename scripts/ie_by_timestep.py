"""L_IE (one-way pair game with rest as context, border 1, pixel value) per timestep for pipeline folders: at which
noise levels does one region's output depend on the other regions' inputs? Prints the eps-space value (what training
penalises) and the same difference in x0-prediction space (x (1 - abar) / abar).

    python scripts/ie_by_timestep.py outputs/s11-baseline runs/s13/ctx-border1-5to3      # 2-3 min per model, 1 thread
"""
import os, sys
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pipeline_interpretable_ddpm as pid
from face_data import load_faces
from diffusers import UNet2DModel, DDPMScheduler
torch.set_num_threads(1)
faces = load_faces(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "utkface64"),
                   "test", limit=200, resolution=64)
imgs = torch.from_numpy(faces.images).permute(0,3,1,2).float()/127.5-1
labels = torch.from_numpy(faces.labels); hm = torch.from_numpy(faces.has_mask)
imgs, labels = imgs[hm][:48], labels[hm][:48]
concepts = pid.parse_concepts("eyes=4,5 nose=6 mouth=7")
regions = pid.region_partition(labels, concepts, 2)
sched = DDPMScheduler(num_train_timesteps=1000)
ac = sched.alphas_cumprod
for path in sys.argv[1:]:
    unet = UNet2DModel.from_pretrained(path, subfolder="unet").float().eval()
    row = []
    for t in [20, 100, 250, 400, 550, 700, 850, 980]:
        g = torch.Generator().manual_seed(0)
        tt = torch.full((len(imgs),), t)
        noise = torch.randn(imgs.shape, generator=g)
        noisy = sched.add_noise(imgs, noise, tt)
        base = sched.add_noise(imgs.roll(1,0), torch.randn(imgs.shape, generator=g), tt)
        tot = 0
        for rep in range(2):
            plan = pid.plan_coalitions(regions, "pair", 4, g, [3])
            coal = pid.coalition_inputs(noisy, base, regions, plan.coalitions)
            with torch.no_grad():
                eps = unet(coal.flatten(0,1), tt.repeat_interleave(2)).sample.reshape(coal.shape)
            tot += pid.loss_from_coalition_outputs(eps, plan, regions, "pixel", border=1).item()/2
        x0w = (1-ac[t])/ac[t]
        row.append(f"t{t}:{tot:.2e}(x0 {tot*x0w:.2e})")
    print(path, " ".join(row), flush=True)
