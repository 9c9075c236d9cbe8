"""Distributed helpers for torchrun. A plain `python3 train.py` never initialises a process group.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) `setup()` joins the group:
NCCL on CUDA, gloo on the CPU. Every helper here is a no-op in a single process.
"""
import datetime
import os

import torch
import torch.distributed as dist

from . import devices


def setup(device_arg, timeout_s=600, announce=True):
    """Join the torchrun group if there is one; return the torch.device for this process, made
    the current CUDA device (a single-process `--device cuda:1` opens no context on GPU 0), and
    print (main process) the line that says where the stage runs (fgvc.devices.describe)."""
    device = torch.device(devices.resolve(device_arg) if str(device_arg) == "auto" else device_arg)
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) >= 2:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    elif device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    if announce and is_main():
        print(devices.describe(device, world()), flush=True)
    return device


def enabled():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if enabled() else 0


def world():
    return dist.get_world_size() if enabled() else 1


def is_main():
    return rank() == 0


def barrier():
    if enabled():
        dist.barrier()


def all_sum(values, device):
    """Sum a list of numbers (floats, or 0-d tensors already on `device`) over all processes:
    one collective and one device-to-host read."""
    t = torch.stack([v.to(torch.float64) if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64, device=device)
                     for v in values]) if any(torch.is_tensor(v) for v in values) else torch.tensor(values, dtype=torch.float64, device=device)
    if enabled():
        dist.all_reduce(t)
    return t.tolist()


def all_min(value, device):
    """The smallest of one number over all processes."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if enabled():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.item()


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] (just [obj] in a single process)."""
    if not enabled():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(tensor):
    """[tensor of rank 0, of rank 1, ...] on rank 0 (CPU tensors of the same shape), None on the
    others; [tensor] in a single process. Only rank 0 receives: nothing grows on the others."""
    if not enabled():
        return [tensor]
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = tensor.to(on)
    out = [torch.empty_like(t) for _ in range(world())] if is_main() else None
    dist.gather(t, out, dst=0)
    return [o.cpu() for o in out] if out is not None else None


def broadcast_object(obj):
    """Rank 0's `obj`, on every rank."""
    if not enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(module):
    """Give every process rank 0's buffers (batch-norm statistics): DDP broadcasts them only at
    the start of each training forward, so after the last step each rank holds its own."""
    if enabled():
        for b in module.buffers():
            dist.broadcast(b, src=0)


def cleanup():
    if enabled():
        dist.destroy_process_group()
