"""The trainer's iteration: one discriminator state for feature matching, a clean AMP stop, frozen G1, GAN modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from covid_ct_cgan.engines.stages import checkpoint_candidates, run_stage

from tiny_training import OracleGenerator, PoisonImage, tiny_parser

STAGES = ("global", "local", "joint")


def _collect(trainer: Engine, keys: tuple[str, ...]) -> dict[str, list[float]]:
    """Record the trainer's ``keys`` (batch means, the same in every decollated item) after each iteration."""
    values: dict[str, list[float]] = {k: [] for k in keys}

    def grab(engine: Engine) -> None:
        first = engine.state.output[0]
        for k in keys:
            values[k].append(first[k])

    trainer.add_event_handler(Events.ITERATION_COMPLETED, grab)
    return values


@pytest.mark.parametrize("condition", ["map", "map+context"])
@pytest.mark.parametrize("stage", STAGES)
def test_perfect_generator_has_zero_feature_matching_loss(prepared_tiny: Path, stage: str, condition: str) -> None:
    """fake == real must give FM(D) == 0 in every iteration: real and fake features from one D state."""
    oracle = OracleGenerator()
    parser = tiny_parser(prepared_tiny, stage, network=oracle, condition=condition, epochs=1)
    parser["train#trainer#train_handlers"] = []
    trainer = parser.get_parsed_content("train#trainer")
    oracle.attach(trainer)
    assert trainer.region_weighted == (condition == "map+context")
    assert trainer.lambda_fm == 10.0 and parser.get_parsed_content("learning_rate") == 2e-4
    if stage == "joint":  # the learned DFM weight is on
        assert trainer.dfm_net.learnable and trainer.dfm_optimizer is not None
    d_before = [p.detach().clone() for p in trainer.discriminator.parameters()]
    values = _collect(trainer, ("g_fm", "d_loss", "dfm_weight"))
    trainer.run()
    assert trainer.state.iteration == 2
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(trainer.discriminator.parameters(), d_before))
    assert moved > 1e-5  # D stepped between the real features of its step and the generator step
    assert all(abs(v) < 1e-6 for v in values["g_fm"]), values["g_fm"]
    if stage == "joint":
        assert all(0.1 < b < 0.9 for b in values["dfm_weight"])


@pytest.mark.parametrize("bad_iteration", [1, 3])
def test_non_finite_loss_with_grad_scaler_stops_cleanly(
    work_dir: Path, capsys: pytest.CaptureFixture, bad_iteration: int
) -> None:
    """A NaN discriminator loss under a GradScaler (the CUDA AMP path; here its CPU twin) skips every step and
    the scaler update, then ends the run with one ERROR line and exit 1, the last good checkpoints kept."""
    scaler = torch.amp.GradScaler("cpu")
    parser = tiny_parser(work_dir, "local", epochs=2, checkpoint_every=1, **{"train#trainer#grad_scaler": scaler})
    trainer = parser.get_parsed_content("train#trainer")
    save_dict = parser.get_parsed_content("save_dict")
    PoisonImage(bad_iteration).attach(trainer)
    stage_dir = Path(parser.get_parsed_content("stage_dir"))
    with pytest.raises(SystemExit) as stop:
        run_stage(trainer, save_dict, stage_dir)
    assert stop.value.code == 1
    assert trainer.scaler is scaler and trainer.state.epoch_length == 2  # 3 training slices, batch 2
    assert trainer.state.iteration == bad_iteration  # stopped right there
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, errors
    epoch = (bad_iteration - 1) // 2 + 1
    assert errors[0].startswith(f"ERROR: non-finite loss at epoch {epoch}, iteration {bad_iteration} (loss=nan, d_loss=nan")
    assert "last good" in errors[0]
    saved = sorted(p.name for p in checkpoint_candidates(stage_dir))
    if bad_iteration == 1:
        assert saved == []  # nothing good to keep, nothing written after the bad iteration
        return
    # the good ones stay, no mid-epoch checkpoint of the bad iteration; resume starts after epoch 1
    assert saved == ["checkpoint_epoch=1.pt", "checkpoint_iteration=1.pt"]
    assert checkpoint_candidates(stage_dir)[0].name == "checkpoint_epoch=1.pt"
    ckpt = torch.load(stage_dir / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2
    for name in ("generator", "discriminator"):  # the bad iteration changed no weight
        live = save_dict[name].state_dict()
        assert all(torch.equal(live[k], v) for k, v in ckpt[name].items()), name


def _global_state(generator: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in generator.global_net.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("fused_adam, scaler", [(True, False), (False, False), (True, True)])
def test_frozen_global_generator_does_not_move_then_trains(prepared_tiny: Path, fused_adam: bool, scaler: bool) -> None:
    """freeze_global_epochs=1: in epoch 1 G1 keeps its weights (and Adam no moments for them) while G2,
    DESUM and D train; from epoch 2 G1 trains too."""
    overrides: dict = {"fused_adam": fused_adam, "freeze_global_epochs": 1, "handover": None, "handover_discriminator": None}
    if scaler:
        overrides["train#trainer#grad_scaler"] = torch.amp.GradScaler("cpu")
    parser = tiny_parser(prepared_tiny, "joint", **overrides)
    parser["train#trainer#train_handlers"] = []
    trainer = parser.get_parsed_content("train#trainer")
    generator, optimizer = trainer.generator, trainer.g_optimizer
    assert trainer.freeze_global_epochs == 1 and optimizer.defaults["fused"] is fused_adam
    g1_ids = {id(p) for p in generator.global_net.parameters()}
    start = _global_state(generator)
    others = {k: v.detach().clone() for k, v in generator.state_dict().items() if not k.startswith("global_net")}
    seen: dict[int, dict] = {}

    def snapshot(engine: Engine) -> None:
        seen[engine.state.epoch] = {
            "g1": _global_state(generator),
            "others": {k: v.detach().clone() for k, v in generator.state_dict().items() if not k.startswith("global_net")},
            "g1_in_adam": any(id(p) in g1_ids for p in optimizer.state),
        }

    trainer.add_event_handler(Events.EPOCH_COMPLETED, snapshot)
    trainer.run()
    assert trainer.state.epoch == 2
    assert _changed(start, seen[1]["g1"]) == set()  # frozen: not one weight moved
    assert not seen[1]["g1_in_adam"]
    assert _changed(others, seen[1]["others"])  # G2 and DESUM trained meanwhile
    assert any(k.startswith("desum") for k in _changed(others, seen[1]["others"]))
    moved = _changed(seen[1]["g1"], seen[2]["g1"])
    # in the joint stage G1 contributes its features (not its output head): those train from epoch 2
    expected = {k for k in start if not k.startswith("head")}
    assert moved == expected, sorted(moved ^ expected)
    assert seen[2]["g1_in_adam"]
    assert all(p.requires_grad for p in generator.parameters())


def test_frozen_global_generator_survives_resume(work_dir: Path) -> None:
    """A stage resumed inside the frozen epochs keeps G1 frozen, then trains it (fused Adam, the default)."""

    def train(epochs: int) -> None:
        parser = tiny_parser(work_dir, "joint", epochs=epochs, freeze_global_epochs=2, handover=None,
                             handover_discriminator=None, keep_checkpoints=3)
        run_stage(parser.get_parsed_content("train#trainer"), parser.get_parsed_content("save_dict"),
                  parser.get_parsed_content("stage_dir"))

    stage_dir = work_dir / "output" / "joint"
    train(1)
    train(3)  # resumes after epoch 1: epoch 2 frozen, epoch 3 trains
    ckpts = {e: torch.load(stage_dir / f"checkpoint_epoch={e}.pt", map_location="cpu", weights_only=True) for e in (1, 2, 3)}
    g1 = {e: {k: v for k, v in c["generator"].items() if k.startswith("global_net.")} for e, c in ckpts.items()}
    assert _changed(g1[1], g1[2]) == set()
    assert {k for k in _changed(g1[2], g1[3])} == {k for k in g1[2] if not k.startswith("global_net.head")}
    names = [k for k, _ in tiny_parser(work_dir, "joint").get_parsed_content("network").named_parameters()]
    g1_index = {i for i, n in enumerate(names) if n.startswith("global_net.")}
    assert not g1_index & set(ckpts[2]["g_optimizer"]["state"])  # Adam kept no moments for frozen G1
    assert g1_index & set(ckpts[3]["g_optimizer"]["state"])
    assert ckpts[2]["g_optimizer"]["param_groups"][0]["fused"] is True


def test_freezing_needs_a_global_generator() -> None:
    from covid_ct_cgan.engines import ConditionalGanTrainer

    with pytest.raises(ValueError, match="freeze_global_epochs=2 needs a generator with a global_net"):
        ConditionalGanTrainer("cpu", 1, [], torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1),
                              torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]),
                              torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]), freeze_global_epochs=2)
    with pytest.raises(ValueError, match="gan_mode must be one of"):
        ConditionalGanTrainer("cpu", 1, [], torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1),
                              torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]),
                              torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]), gan_mode="wgan")


@pytest.mark.parametrize("gan_mode", ["lsgan", "vanilla"])
def test_gan_mode_reaches_every_gan_loss(prepared_tiny: Path, monkeypatch: pytest.MonkeyPatch, gan_mode: str) -> None:
    from covid_ct_cgan import losses

    calls: list[tuple[bool, str]] = []
    real_gan_loss = losses.gan_loss

    def spy(predictions, target_is_real, weights=None, mode="lsgan"):
        calls.append((target_is_real, mode))
        return real_gan_loss(predictions, target_is_real, weights, mode)

    monkeypatch.setattr(losses, "gan_loss", spy)
    parser = tiny_parser(prepared_tiny, "local", gan_mode=gan_mode, epochs=1)
    parser["train#trainer#train_handlers"] = []
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    # per iteration: D on real (True), D on fake (False), G on fake (True)
    assert calls == [(True, gan_mode), (False, gan_mode), (True, gan_mode)] * trainer.state.iteration
