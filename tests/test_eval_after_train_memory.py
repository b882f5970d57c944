"""The evaluation after training loads its model only once the training model, optimizer and trainer are gone
(at 7B-32B two copies beside the optimizer state do not fit)."""

from __future__ import annotations

import weakref
from pathlib import Path

from .conftest import small_data_overrides

# Validation during training too: its callback holds the trainer (cb.trainer) for the whole run.
OVERRIDES = ["trainer.max_steps=2", "trainer.eval_steps=1", "trainer.eval_samples=4", "max_new_tokens=2",
             "trainer.per_device_train_batch_size=8", "trainer.save_steps=1000", "eval_after_train=true",
             "eval.metrics=[exact_match]", "data.max_eval_samples=8"]


def test_training_model_and_optimizer_are_collected_before_the_evaluation_loads(compose, small_synth, monkeypatch):
    from transformers import Trainer

    from medvl.evaluation import run as eval_run
    from medvl.training import run

    refs: dict[str, weakref.ref] = {}
    real_load, real_build, real_optimizer = run.load_for_training, eval_run.load_for_eval, Trainer.create_optimizer

    def load_for_training(*args, **kwargs):
        targs, processor, model = real_load(*args, **kwargs)
        refs["model"] = weakref.ref(model)
        return targs, processor, model

    def create_optimizer(self, *args, **kwargs):
        optimizer = real_optimizer(self, *args, **kwargs)
        refs["optimizer"], refs["trainer"] = weakref.ref(optimizer), weakref.ref(self)
        return optimizer

    alive_at_eval_load = []

    def load_for_eval(*args, **kwargs):
        alive_at_eval_load.extend(name for name, ref in refs.items() if ref() is not None)  # no gc.collect here
        return real_build(*args, **kwargs)

    monkeypatch.setattr(run, "load_for_training", load_for_training)
    monkeypatch.setattr(Trainer, "create_optimizer", create_optimizer)
    monkeypatch.setattr(eval_run, "load_for_eval", load_for_eval)
    cfg = compose([*small_data_overrides(small_synth), *OVERRIDES])
    metrics = run.train(cfg)
    assert set(refs) == {"model", "optimizer", "trainer"}
    assert alive_at_eval_load == []
    assert "exact_match" in metrics["eval"]
    # The adapter's model card is rewritten with the evaluation's numbers as model-index metadata.
    from huggingface_hub import ModelCard

    card = ModelCard.load(Path(cfg.output_dir) / "adapter" / "README.md")
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values["exact_match"] == round(metrics["eval"]["exact_match"], 4)


def test_release_training_drops_the_callbacks_hold_on_the_trainer():
    from types import SimpleNamespace

    from medvl.training.run import release_training

    freed = []
    accelerator = SimpleNamespace(free_memory=lambda: freed.append(True))
    trainer = SimpleNamespace(accelerator=accelerator, model=object(), model_wrapped=object(), deepspeed=None,
                              optimizer=object(), lr_scheduler=object(),
                              callback_handler=SimpleNamespace(model=object(), optimizer=object(),
                                                               lr_scheduler=object()))
    callbacks = [SimpleNamespace(trainer=trainer), SimpleNamespace(other=1)]
    release_training(trainer, callbacks)
    assert callbacks[0].trainer is None and freed == [True]
    assert trainer.model is trainer.optimizer is trainer.callback_handler.model is None
