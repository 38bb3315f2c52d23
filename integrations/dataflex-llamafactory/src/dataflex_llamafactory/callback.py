"""The TrainerCallback that runs the DataFlex schedule inside a Hugging Face training loop."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from dataflex_core import get_plugin_manager
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


__all__ = ["DataflexCallback"]

log = logging.getLogger(__name__)


class DataflexCallback(TrainerCallback):
    """Steps the controller after every optimizer step and saves/restores its state."""

    def __init__(self, controller: Any, run_info: dict[str, Any]) -> None:
        self.controller = controller
        self.run_info = run_info

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        c = self.controller
        if state.global_step > 0:
            ckpt = args.resume_from_checkpoint
            if not isinstance(ckpt, str):
                ckpt = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            c.load(ckpt, state.global_step)
            log.info("restored DataFlex state from %s at step %d", ckpt, state.global_step)
        else:
            if c.rank == 0:
                # A fresh run into an existing output_dir (overwrite_output_dir): earlier
                # decision logs belong to another run.
                for name in ("decisions.jsonl", "doremi_weights.jsonl", "selections.jsonl", "timing.jsonl"):
                    (Path(args.output_dir) / "dataflex" / name).unlink(missing_ok=True)
            c.on_train_begin(0)
        get_plugin_manager().hook.dataflex_on_train_begin(run={**self.run_info, "step": state.global_step})

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if hasattr(self.controller, "wants_eval_loss"):
            self.controller.on_step_end(state.global_step, model=kwargs.get("model"))
        else:
            self.controller.on_step_end(state.global_step)
        get_plugin_manager().hook.dataflex_on_step_end(step=state.global_step, run=self.run_info)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ckpt = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        self.controller.save(ckpt, state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.controller.finish(args.output_dir)
        get_plugin_manager().hook.dataflex_on_train_end(step=state.global_step, run=self.run_info)

    @staticmethod
    def read_decisions(path: str | Path) -> list[dict[str, Any]]:
        """Parse a decisions log (one JSON object per line)."""
        return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
