"""recipes/speech_ctc.py end to end, offline, in seconds: the bi-LSTM on spoken digits (espeak-ng when
installed, else the labelled synthetic fallback) and wav2vec2 on a local json stand-in for LibriSpeech;
the LSTM's alignment pairs against an independent numpy computation; the power-mel features and the
data source against numpy / scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tiny_models import load_recipe

import hf_spectral

TINY = ["--model_preset", "tiny", "--num_utterances", "24", "--max_steps", "6", "--per_device_train_batch_size", "4",
        "--spectra_schedule", "0,1,3,6", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lstm") / "run"
    load_recipe("speech_ctc").main(["--output_dir", str(out), "--model_type", "lstm", *TINY])
    return out


def _check_written(out, steps):
    dyn = hf_spectral.dynamics_from_source(out / "spectral")
    assert list(dyn.summary["step"]) == steps
    assert (out / "report" / "index.html").is_file()
    assert "spectral" in (out / "README.md").read_text().lower()
    history = json.loads((out / "spectral" / "log_history.json").read_text())
    cer = [e["eval_cer"] for e in history if "eval_cer" in e]
    assert cer and all(math.isfinite(c) and c >= 0 for c in cer)
    return dyn


def test_lstm_run_wrote_record_report_card_and_cer(lstm_run):
    from transformers import Wav2Vec2Processor

    _check_written(lstm_run, [0, 1, 3, 6])
    processor = Wav2Vec2Processor.from_pretrained(lstm_run)  # saved with the model, from the local vocab.json
    vocab = json.loads((lstm_run / "vocab.json").read_text())
    assert processor.tokenizer.get_vocab() == vocab and vocab["<pad>"] == 0 and vocab["|"] == 2
    assert processor.tokenizer.decode(processor.tokenizer("one two").input_ids) == "one two"
    model = load_recipe("speech_ctc").SpeechLSTMForCTC.from_pretrained(lstm_run)
    assert model.lstm.num_layers == 2 and model.lstm.bidirectional


def _top_diagonal(u_prev: np.ndarray, v_next: np.ndarray, k: int) -> np.ndarray:
    return np.abs(np.diag(u_prev.T @ v_next))[:k]


def test_lstm_alignment_pairs_match_numpy(lstm_run):
    """The paper's LSTM pairing recomputed with float64 numpy SVDs of the saved final weights (those of the
    step-6 snapshot): the g-gate block of the left vectors of the whole stacked (i, f, g, o) matrix, as the
    authors do, against the right vectors of the next matrix, read on its direction's column half."""
    w = {k: v.astype(np.float64) for k, v in load_file(lstm_run / "model.safetensors").items()}
    h = 16
    g = slice(2 * h, 3 * h)  # gate order i, f, g, o
    cases = {
        "lstm.weight_ih_l0[g] → lstm.weight_hh_l0": (w["lstm.weight_ih_l0"], w["lstm.weight_hh_l0"]),
        "lstm.weight_hh_l0_reverse[g] → lstm.weight_ih_l1[rev]": (w["lstm.weight_hh_l0_reverse"],
                                                                  w["lstm.weight_ih_l1"][:, h:]),
        "lstm.weight_ih_l0[g] → lstm.weight_ih_l1_reverse[fwd]": (w["lstm.weight_ih_l0"],
                                                                  w["lstm.weight_ih_l1_reverse"][:, :h]),
        "lstm.weight_hh_l1[g] → head[fwd]": (w["lstm.weight_hh_l1"], w["head.weight"][:, :h]),
    }
    dyn = hf_spectral.dynamics_from_source(lstm_run / "spectral")
    final = dyn.alignment[dyn.alignment["step"] == 6]
    assert len(set(final["pair"])) == 4 + 8 + 4  # ih→hh per cell; 2×2×2 into layer 1; 4 into the head
    for label, (prev, nxt) in cases.items():
        u = np.linalg.svd(prev, full_matrices=False)[0][g]  # the g gate's rows of the stacked left vectors
        v = np.linalg.svd(nxt, full_matrices=False)[2].T
        got = final[final["pair"] == label].sort_values("index")["value"].to_numpy()
        assert len(got) > 0, label
        np.testing.assert_allclose(got, _top_diagonal(u, v, len(got)), atol=2e-4, err_msg=label)


def test_wav2vec2_on_a_local_dataset_stand_in(tmp_path):
    """The --dataset_name / --train_file path (LibriSpeech's columns: audio arrays + upper-case text)."""
    from transformers import Wav2Vec2ForCTC

    rng = np.random.default_rng(0)
    digits = hf_spectral.spoken_digits(20, seed=1, source="tones")
    rows = [{"audio": {"array": a.tolist(), "sampling_rate": 16_000}, "text": t.upper()} for a, t in zip(digits.audio, digits.text)]
    rows += [{"audio": {"array": (0.1 * rng.standard_normal(8_000)).tolist(), "sampling_rate": 8_000}, "text": "ONE"}]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    load_recipe("speech_ctc").main(["--output_dir", str(out), "--model_type", "wav2vec2", "--train_file", str(train),
                                    *[a for a in TINY if a not in ("--num_utterances", "24")]])
    _check_written(out, [0, 1, 3, 6])
    with pytest.raises(hf_spectral.SpectralError, match="no column 'speech'.*--audio_column"):
        load_recipe("speech_ctc").main(["--output_dir", str(tmp_path / "bad"), "--train_file", str(train),
                                        "--audio_column", "speech"])
    model = Wav2Vec2ForCTC.from_pretrained(out)
    assert model.config.vocab_size == len(json.loads((out / "vocab.json").read_text()))
    assert set(json.loads((out / "vocab.json").read_text())) >= set("onetwhr")  # lower-cased transcripts


def test_power_mel_features_match_numpy():
    module = load_recipe("speech_ctc")
    config = module.SpeechLSTMConfig(num_mel_bins=8, n_fft=64, hop_length=16)
    mel = module.PowerMel(config)
    x = np.random.default_rng(0).standard_normal(200)
    frames = len(x) // 16 + 1
    got = mel(torch.tensor(x[None], dtype=torch.float32), torch.tensor([frames]))[0].double().numpy()
    padded = np.pad(x, 32, mode="reflect")  # torch.stft(center=True) pads n_fft/2 by reflection
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(64) / 64)  # periodic Hann
    power = np.stack([np.abs(np.fft.rfft(padded[i * 16: i * 16 + 64] * window)) ** 2 for i in range(frames)])
    expected = power @ mel.bank.double().numpy()
    np.testing.assert_allclose(got, expected / expected.mean(), rtol=2e-4)
    paper = module.SpeechLSTMForCTC(module.SpeechLSTMConfig(**module.LSTM["paper"], vocab_size=30))
    assert (paper.lstm.num_layers, paper.lstm.hidden_size, paper.lstm.input_size) == (4, 256, 40)
    assert "features.bank" not in paper.state_dict()  # a derived buffer, never saved as a "matrix"


def test_spoken_digits_sources():
    tones = hf_spectral.spoken_digits(3, seed=0, source="tones")
    assert "SYNTHETIC FALLBACK" in tones.source and all(t.split() for t in tones.text)
    assert all(a.dtype == np.float32 and len(a) > 1_000 for a in tones.audio)
    # resampling keeps a tone's frequency: 440 Hz at 22,050 Hz → 16 kHz, the spectrum peaks at 440 Hz
    t = np.arange(22_050) / 22_050
    y = hf_spectral.resample_audio(np.sin(2 * np.pi * 440 * t).astype(np.float32), 22_050)
    assert len(y) == 16_000 and np.argmax(np.abs(np.fft.rfft(y))) == 440
    if not hf_spectral.espeak_available():
        with pytest.raises(hf_spectral.SpectralError, match="espeak-ng"):
            hf_spectral.spoken_digits(1, source="espeak")
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): the real-speech source is untested here")
    speech = hf_spectral.spoken_digits(2, seed=0, source="espeak")
    assert speech.source == "espeak-ng" and all(0.3 < len(a) / 16_000 < 5 for a in speech.audio)
    assert all(np.abs(a).max() > 0.05 for a in speech.audio)  # not silence
