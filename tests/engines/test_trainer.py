"""The trainer's iteration: one discriminator state for feature matching, a clean AMP stop, frozen G1, GAN modes,
the local discriminator of lesion inpainting."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from covid_ct_cgan.engines.stages import checkpoint_candidates, run_stage
from covid_ct_cgan.errors import entry_point

from tiny_training import REPO_ROOT, TINY, TRAIN_YAML, OracleGenerator, PoisonImage, tiny_cli, tiny_parser

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
    with pytest.raises(SystemExit) as stop:  # as train.yaml's run id calls it
        entry_point(run_stage, trainer, save_dict, stage_dir)
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

    def spy(predictions, target_is_real, weights=None, mode="lsgan", targets=None):
        calls.append((target_is_real, mode))
        return real_gan_loss(predictions, target_is_real, weights, mode, targets)

    monkeypatch.setattr(losses, "gan_loss", spy)
    parser = tiny_parser(prepared_tiny, "local", gan_mode=gan_mode, epochs=1)
    parser["train#trainer#train_handlers"] = []
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    # per iteration: D on real (True), D on fake (False), G on fake (True)
    assert calls == [(True, gan_mode), (False, gan_mode), (True, gan_mode)] * trainer.state.iteration


# ---- the local discriminator (lesion inpainting, lesion_inpainting.yaml)

LESION_OVERLAY = REPO_ROOT / "bundle" / "configs" / "lesion_inpainting.yaml"
INPAINTING = {"condition": "map+context", "context_region": "lesion", "local_d": True, "local_crop": 16}
LOCAL_KEYS = ("d_local", "g_local", "g_local_fm")


def test_local_discriminator_learns_and_its_terms_reach_the_output(work_dir: Path) -> None:
    """The local D is built, held by the shared D optimizer, gets gradients and moves; its losses are in every
    iteration's output, in the epoch means and in the generator's loss."""
    parser = tiny_parser(work_dir, "local", epochs=1, **INPAINTING)
    trainer = parser.get_parsed_content("train#trainer")
    local_d = trainer.local_discriminator
    assert type(local_d).__name__ == "LocalDiscriminator" and trainer.local_crop == 16 and trainer.lambda_local == 1.0
    held = {id(p) for g in trainer.d_optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in local_d.parameters()} <= held
    assert {id(p) for p in trainer.discriminator.parameters()} <= held
    before = [p.detach().clone() for p in local_d.parameters()]
    grads: list[bool] = []
    trainer.add_event_handler(  # gradients of the D step (the G step leaves D's requires_grad off)
        Events.ITERATION_COMPLETED,
        lambda e: grads.append(all(p.grad is not None and p.grad.abs().sum() > 0 for p in local_d.parameters())),
    )
    values = _collect(trainer, ("loss", "g_gan", "g_fm", *LOCAL_KEYS))
    trainer.run()
    assert trainer.state.iteration == 2 and grads == [True, True]
    assert all((p.detach() - q).abs().max() > 0 for p, q in zip(local_d.parameters(), before))
    for i in range(2):
        assert all(math.isfinite(values[k][i]) and values[k][i] > 0 for k in LOCAL_KEYS)
        expected = values["g_gan"][i] + 10 * values["g_fm"][i] + values["g_local"][i] + 10 * values["g_local_fm"][i]
        assert values["loss"][i] == pytest.approx(expected, rel=1e-5)
    metrics = trainer.state.metrics
    for key in LOCAL_KEYS:
        assert metrics[f"train_{key}"] == pytest.approx(sum(values[key]) / 2)
    assert all(p.requires_grad for p in local_d.parameters())


def test_local_term_moves_the_generator(prepared_tiny: Path) -> None:
    """One iteration with lambda_local 1 or 0 (same seed, same crops): the generator's update differs, so the
    local GAN and feature-matching terms reach it; the global D's update is the same."""

    g_on, d_on, _ = _one_iteration(prepared_tiny, **INPAINTING, lambda_local=1.0)
    g_off, d_off, _ = _one_iteration(prepared_tiny, **INPAINTING, lambda_local=0.0)
    assert all(torch.equal(d_on[k], d_off[k]) for k in d_on)
    assert _changed(g_on, g_off)


def test_local_discriminator_is_checked() -> None:
    from covid_ct_cgan.engines import ConditionalGanTrainer
    from covid_ct_cgan.networks.discriminator import LocalDiscriminator

    g, d, local = torch.nn.Conv2d(5, 1, 1), torch.nn.Conv2d(1, 1, 1), LocalDiscriminator(5, ndf=4, n_layers=1)
    g_opt = torch.optim.Adam(g.parameters())
    with pytest.raises(ValueError, match=r"local_discriminator's parameters must be in d_optimizer"):
        ConditionalGanTrainer("cpu", 1, [], g, d, g_opt, torch.optim.Adam(d.parameters()), local_discriminator=local)
    both = torch.optim.Adam([*d.parameters(), *local.parameters()])
    with pytest.raises(ValueError, match="local_crop must be at least 1, got 0"):
        ConditionalGanTrainer("cpu", 1, [], g, d, g_opt, both, local_discriminator=local, local_crop=0)
    with pytest.raises(ValueError, match="lambda_local must be at least 0, got -1"):
        ConditionalGanTrainer("cpu", 1, [], g, d, g_opt, both, local_discriminator=local, lambda_local=-1)
    with pytest.raises(ValueError, match="lambda_texture must be at least 0, got -1"):
        ConditionalGanTrainer("cpu", 1, [], g, d, g_opt, both, local_discriminator=local, lambda_texture=-1)


def test_texture_term_reaches_the_generator_loss(work_dir: Path) -> None:
    """With lambda_texture the local D's Gram-matrix term is logged (every iteration and the epoch mean) and is in
    the generator's loss with its weight; without it the term is not computed."""
    parser = tiny_parser(work_dir, "local", epochs=1, lambda_texture=3.0, **INPAINTING)
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.lambda_texture == 3.0
    values = _collect(trainer, ("loss", "g_gan", "g_fm", *LOCAL_KEYS, "g_local_texture"))
    trainer.run()
    for i in range(2):
        assert math.isfinite(values["g_local_texture"][i]) and values["g_local_texture"][i] > 0
        expected = (values["g_gan"][i] + 10 * values["g_fm"][i] + values["g_local"][i] + 10 * values["g_local_fm"][i]
                    + 3 * values["g_local_texture"][i])
        assert values["loss"][i] == pytest.approx(expected, rel=1e-5)
    assert trainer.state.metrics["train_g_local_texture"] == pytest.approx(sum(values["g_local_texture"]) / 2)
    plain = tiny_parser(work_dir, "local", epochs=1, **INPAINTING).get_parsed_content("train#trainer")
    plain.run()
    assert plain.lambda_texture == 0 and "g_local_texture" not in plain.state.output


@pytest.mark.parametrize("stage", STAGES)
def test_perfect_generator_has_zero_feature_matching_loss_with_the_local_discriminator(prepared_tiny: Path, stage: str) -> None:
    """fake == real gives FM == 0 on the global and on the local discriminator, each from one D state."""
    oracle = OracleGenerator()
    parser = tiny_parser(prepared_tiny, stage, network=oracle, epochs=1, **INPAINTING)
    parser["train#trainer#train_handlers"] = []
    trainer = parser.get_parsed_content("train#trainer")
    oracle.attach(trainer)
    assert trainer.local_crop == (8 if stage == "global" else 16)  # the global stage crops at half resolution
    before = [p.detach().clone() for p in trainer.local_discriminator.parameters()]
    values = _collect(trainer, ("g_fm", "g_local_fm", "d_local"))
    trainer.run()
    assert trainer.state.iteration == 2
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(trainer.local_discriminator.parameters(), before))
    assert moved > 1e-5  # the local D stepped between its real features and the generator step
    assert all(abs(v) < 1e-6 for v in values["g_fm"]), values["g_fm"]
    assert all(abs(v) < 1e-6 for v in values["g_local_fm"]), values["g_local_fm"]
    assert all(v > 0 for v in values["d_local"])


@pytest.mark.integration
def test_lesion_inpainting_overlay_trains_hands_over_and_resumes(work_dir: Path) -> None:
    """The overlay for one epoch of every stage: the local D is in every checkpoint and in the shared D optimizer,
    the joint stage starts it from the local stage, a stage resumes with it, and turning it off is refused."""
    from covid_ct_cgan.settings import run_bundle

    configs = [TRAIN_YAML, str(LESION_OVERLAY)]
    run_bundle("training", config_file=configs, **{**TINY, "work_dir": str(work_dir), "epochs": 1})
    out = work_dir / "output_lesion_inpainting"
    for stage in STAGES:
        ckpt = torch.load(out / stage / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
        local = ckpt["local_discriminator"]
        assert list(local) and all(k.startswith("discriminators.0.") for k in local)
        n_global = len(ckpt["discriminator"]) - sum(1 for k in ckpt["discriminator"] if "num_batches" in k)
        assert len(ckpt["d_optimizer"]["param_groups"][0]["params"]) == n_global + len(local)
        recorded = json.loads((out / stage / "settings.json").read_text())["networks"]  # built, so recorded
        assert recorded["local_discriminator"]["_target_"].endswith(".LocalDiscriminator")
        assert (out / stage / "samples" / "latest.png").is_file()
    # the joint stage's hand-over starts its local D from the local stage's
    from covid_ct_cgan.engines.stages import hand_over

    joint = tiny_parser(work_dir, "joint", **{k: v for k, v in INPAINTING.items() if k != "local_crop"},
                        output_dir=str(out))
    fresh_local = joint.get_parsed_content("local_discriminator")
    hand_over(joint.get_parsed_content("network"), {}, joint.get_parsed_content("discriminator"), out / "local", fresh_local)
    local_stage = torch.load(out / "local" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert not _changed(local_stage["local_discriminator"], fresh_local.state_dict())
    # resume the local stage for a second epoch: its local D is restored strictly
    first = torch.load(out / "local" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    run_bundle("train_local", config_file=configs, **{**TINY, "work_dir": str(work_dir), "epochs": 2})
    second = torch.load(out / "local" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert second["trainer"]["iteration"] == 2 * second["trainer"]["epoch_length"]
    # the resumed run goes on at the rate where the 1-epoch schedule ended (0): the restored local D comes out
    # exactly as saved (a local D that was not restored would be freshly initialised)
    assert second["d_optimizer"]["param_groups"][0]["lr"] == 0.0
    assert not _changed(first["local_discriminator"], second["local_discriminator"])
    with pytest.raises(SystemExit) as stop:
        run_bundle("train_local", config_file=configs, **{**TINY, "work_dir": str(work_dir), "epochs": 3, "local_d": False})
    assert stop.value.code == 2


def test_local_discriminator_settings_are_checked() -> None:
    from covid_ct_cgan.errors import InputError
    from covid_ct_cgan.settings import BundleCommand, check_overrides, check_training, load_config
    from monai.bundle import ConfigParser

    command = BundleCommand(config_files=(TRAIN_YAML, str(LESION_OVERLAY)))
    check_training(command.load(tracking=False))
    check_overrides(command.load(overrides=False, tracking=False), list(ConfigParser.load_config_file(LESION_OVERLAY)))
    parser = ConfigParser(command.load(tracking=False))
    parser.parse(reset=True)
    assert parser.get_parsed_content("local_crop") == 32 and parser.get_parsed_content("stage_local_crop") == 32
    assert parser.get_parsed_content("local_d") is True and parser.get_parsed_content("context_region") == "lesion"
    for override, message in [
        ({"local_crop": 200}, "local_crop: must be at most image_size (128), got 200"),
        ({"local_crop": 0}, "local_crop: must be at least 1, got 0"),
        ({"lambda_local": -0.5}, "lambda_local: must be a number of at least 0, got -0.5"),
        ({"local_d": "yes"}, "local_d: must be True or False, got 'yes'"),
        ({"lambda_texture": -1.0}, "lambda_texture: must be a number of at least 0, got -1.0"),
    ]:
        with pytest.raises(InputError) as err:
            check_training(load_config(command, **override))
        assert str(err.value) == message
    # without the overlay there is no local D: nothing changes for the other configurations
    plain = ConfigParser(load_config(BundleCommand(config_files=(TRAIN_YAML,))))
    plain.parse(reset=True)
    assert plain.get_parsed_content("local_d") is False


# every rank saves the local D it trained (test only); the `train_local` run's own finalize, after the stage, is
# for the default stage (joint), which did not run here: it writes nothing
RANK_LOCAL_D_OVERLAY = """\
rank_weights: "$@stage_dir + '/rank' + str(torch.distributed.get_rank()) + '_local_d.pt'"
finalize:
  - "$os.path.exists(@rank_weights) or not os.path.isdir(@stage_dir) or torch.save(covid_ct_cgan.engines.unwrap(@local_discriminator).state_dict(), @rank_weights)"
  - "$torch.distributed.barrier()"
"""


@pytest.mark.integration
def test_local_discriminator_under_ddp(tmp_path: Path, subprocess_env: dict) -> None:
    """Two gloo processes: the local D is its own DistributedDataParallel module and both ranks end with the
    same weights as the checkpoint."""
    overlay = tmp_path / "rank_local_d.yaml"
    overlay.write_text(RANK_LOCAL_D_OVERLAY)
    configs = [TRAIN_YAML, str(REPO_ROOT / "bundle" / "configs" / "multi_gpu_train.yaml"), str(LESION_OVERLAY), str(overlay)]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "train_local",
           "--config_file", repr(configs)] + tiny_cli(tmp_path / "work", epochs=1)
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    stage_dir = tmp_path / "work" / "output_lesion_inpainting" / "local"
    saved = torch.load(stage_dir / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)["local_discriminator"]
    ranks = [torch.load(stage_dir / f"rank{r}_local_d.pt", map_location="cpu", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == saved.keys()
    for key in saved:
        assert torch.equal(ranks[0][key], ranks[1][key]) and torch.equal(ranks[0][key], saved[key]), key


# ---- what the discriminators are shown: region targets (d_target) and DiffAugment (d_augment)

AUGMENT = "translation,cutout"


def test_d_target_and_d_augment_are_checked() -> None:
    from covid_ct_cgan.engines import ConditionalGanTrainer

    g, d = torch.nn.Conv2d(5, 1, 1), torch.nn.Conv2d(1, 1, 1)
    g_opt, d_opt = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    with pytest.raises(ValueError, match=r"d_target must be one of \('uniform', 'region'\), got 'soft'"):
        ConditionalGanTrainer("cpu", 1, [], g, d, g_opt, d_opt, d_target="soft")
    with pytest.raises(ValueError, match=r"d_augment: unknown augmentation 'color'"):
        ConditionalGanTrainer("cpu", 1, [], g, d, g_opt, d_opt, d_augment="translation,color")
    plain = ConditionalGanTrainer("cpu", 1, [], g, d, g_opt, d_opt)
    assert plain.d_target == "uniform" and not plain.d_augment.enabled


@pytest.mark.parametrize("options", [{"d_target": "region"}, {"d_augment": AUGMENT},
                                     {"d_target": "region", "d_augment": AUGMENT}])
def test_lesion_inpainting_trains_with_region_targets_and_diffaugment(work_dir: Path, options: dict) -> None:
    """A few iterations of the lesion-inpainting trainer with each option: finite losses, both discriminators and
    the generator move, the options reach the trainer from train.yaml's keys."""
    parser = tiny_parser(work_dir, "local", epochs=2, **INPAINTING, **options)
    parser["train#trainer#train_handlers"] = []
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.d_target == options.get("d_target", "uniform")
    assert trainer.d_augment.policy == (("translation", "cutout") if "d_augment" in options else ())
    nets = {"generator": trainer.generator, "discriminator": trainer.discriminator, "local": trainer.local_discriminator}
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in nets.items()}
    values = _collect(trainer, ("loss", "d_loss", "g_gan", "g_fm", *LOCAL_KEYS))
    trainer.run()
    assert trainer.state.iteration == 4
    assert all(math.isfinite(v) for vs in values.values() for v in vs), values
    for name, net in nets.items():
        assert any((p.detach() - q).abs().max() > 0 for p, q in zip(net.parameters(), before[name])), name


def test_perfect_generator_has_zero_feature_matching_loss_under_diffaugment(prepared_tiny: Path) -> None:
    """The generator step gives the real pair of feature matching the fake pair's draw (global and local D)."""
    oracle = OracleGenerator()
    parser = tiny_parser(prepared_tiny, "joint", network=oracle, epochs=1, d_augment=AUGMENT, **INPAINTING)
    parser["train#trainer#train_handlers"] = []
    trainer = parser.get_parsed_content("train#trainer")
    oracle.attach(trainer)
    values = _collect(trainer, ("g_fm", "g_local_fm", "d_loss"))
    trainer.run()
    assert trainer.state.iteration == 2
    assert all(abs(v) < 1e-6 for v in values["g_fm"] + values["g_local_fm"]), values


def _one_iteration(prepared_tiny: Path, condition: str, **options: object) -> tuple[dict, dict, dict]:
    """Generator and discriminator weights after one seeded iteration, and the trainer's logged values."""
    torch.manual_seed(0)
    parser = tiny_parser(prepared_tiny, "local", epochs=1, condition=condition, **options)
    parser["train#trainer#train_handlers"] = []
    parser["train#trainer#epoch_length"] = 1
    parser["train#dataloader#shuffle"] = False
    trainer = parser.get_parsed_content("train#trainer")
    values = _collect(trainer, ("d_loss", "loss"))
    trainer.run()
    clone = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
    return clone(trainer.generator), clone(trainer.discriminator), {k: v[0] for k, v in values.items()}


def test_region_targets_change_only_the_discriminator_step_of_composites(prepared_tiny: Path) -> None:
    """map+context: the region target changes the discriminator's loss and update; map conditioning (every pixel
    synthesised, so the region target is 0 everywhere): exactly the uniform run."""
    g_uni, d_uni, v_uni = _one_iteration(prepared_tiny, "map+context")
    g_reg, d_reg, v_reg = _one_iteration(prepared_tiny, "map+context", d_target="region")
    assert v_reg["d_loss"] != v_uni["d_loss"] and _changed(d_uni, d_reg)
    g_uni, d_uni, v_uni = _one_iteration(prepared_tiny, "map")
    g_reg, d_reg, v_reg = _one_iteration(prepared_tiny, "map", d_target="region")
    assert v_reg == v_uni and not _changed(d_uni, d_reg) and not _changed(g_uni, g_reg)


def test_diffaugment_shifts_no_other_random_draw(prepared_tiny: Path) -> None:
    """DiffAugment draws from its own stream: the local D's crops and torch's global stream are where they are
    without it."""
    states = {}
    for policy in ("", AUGMENT):
        torch.manual_seed(0)
        parser = tiny_parser(prepared_tiny, "local", epochs=1, d_augment=policy, **INPAINTING)
        parser["train#trainer#train_handlers"] = []
        parser["train#dataloader#shuffle"] = False
        trainer = parser.get_parsed_content("train#trainer")
        trainer.run()
        states[policy] = (trainer._crop_rng.get_state(), torch.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(states[""], states[AUGMENT]))


def test_d_target_and_d_augment_settings_are_checked() -> None:
    from covid_ct_cgan.errors import InputError
    from covid_ct_cgan.settings import BundleCommand, check_training, load_config

    command = BundleCommand(config_files=(TRAIN_YAML, str(LESION_OVERLAY)))
    for ok in ({"d_target": "region"}, {"d_augment": "cutout"}, {"d_augment": ["translation", "cutout"]}):
        check_training(load_config(command, **ok))
    for override, message in [
        ({"d_target": "soft"}, "d_target: must be one of uniform, region; got 'soft'"),
        ({"d_augment": "color"}, "d_augment: unknown augmentation 'color'; expected names from ('translation', 'cutout')"),
        ({"d_augment": 3}, "d_augment: must be a string or a list of strings, got 3"),
    ]:
        with pytest.raises(InputError) as err:
            check_training(load_config(command, **override))
        assert str(err.value) == message
