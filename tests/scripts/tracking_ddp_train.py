"""Run under `accelerate launch --num_processes 2`: a CPU DDP Trainer run tracked by SpectralCallback.

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/tracking_ddp_train.py OUTPUT_DIR
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from tracking_common import lm_trainer  # noqa: E402

from hf_spectral import SpectralCallback  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)  # 2 processes on a shared 2-core machine
    output = sys.argv[1]
    callback = SpectralCallback(top_k=3, max_overhead=100.0)  # never skips, but decides on the main process and broadcasts
    trainer = lm_trainer(output, [callback], max_steps=12, save_steps=6, per_device_train_batch_size=4)
    trainer.train()
    print(f"rank {trainer.args.process_index} of {trainer.args.world_size} done at step {trainer.state.global_step}",
          flush=True)


if __name__ == "__main__":
    main()
