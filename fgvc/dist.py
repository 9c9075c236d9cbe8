"""Distributed helpers for torchrun. A plain `python3 train.py` never initialises a process group.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) `setup()` joins the group:
NCCL on CUDA, gloo on the CPU. Every helper here is a no-op in a single process.
"""
import datetime
import os

import torch
import torch.distributed as dist


def setup(device_arg, timeout_s=600):
    """Join the torchrun group if there is one; return the torch.device for this process."""
    device = torch.device(device_arg)
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
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
    """Sum a list of floats over all processes."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if enabled():
        dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] (just [obj] in a single process)."""
    if not enabled():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


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
