"""Forward + backward of a bidirectional nn.LSTM on a padded batch vs the same batch packed
(pack_padded_sequence), side by side in one process: why recipes/speech_ctc.py's LSTM runs padded.

    python benchmarks/lstm_packed.py            # batch 16 × 200 frames × 40 mels, lengths 100-200
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def timed(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor, packed: bool, repeats: int) -> float:
    """Median seconds of one forward + backward."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if packed:
            seq = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out = nn.utils.rnn.pad_packed_sequence(lstm(seq)[0], batch_first=True)[0]
        else:
            out = lstm(x)[0]
        out.square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(repeats: int = 5) -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 200, 40)
    lengths = torch.randint(100, 201, (16,))
    lengths[0] = 200
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 16 × 200 frames × 40 mels")
    print("layers × hidden   padded s   packed s   packed / padded")
    for layers, hidden in [(2, 96), (3, 96), (4, 256)]:
        lstm = nn.LSTM(40, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        timed(lstm, x, lengths, False, 1)  # warm-up
        padded, packed = (timed(lstm, x, lengths, p, repeats) for p in (False, True))
        print(f"{layers} × {hidden:<10} {padded:>9.3f} {packed:>10.3f} {packed / padded:>12.1f}×")


if __name__ == "__main__":
    main()
