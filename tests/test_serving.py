"""`mia-fast serve`: a real server on loopback answers as the library does, refuses bad requests with a
4xx, refuses overload with 503 and stays up; concurrent requests share batches."""
import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from click.testing import CliRunner

from mia_fast.cli import main
from mia_fast.defenses import AEPPT, OutputDefense, create_defense
from mia_fast.models import SubstituteMIM, TabularMLP
from mia_fast.seeding import stream
from mia_fast.serving import Service, create_app
from mia_fast.testing import random_probs
from mia_fast.training import predict_proba

uvicorn = pytest.importorskip("uvicorn")


@contextlib.contextmanager
def serving(service, **options):
    app = create_app(service, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    return TabularMLP(12, 5).eval()


def test_answers_are_the_librarys(target):
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(1))
    probs = random_probs(4, 5, torch.Generator().manual_seed(2))
    with serving(Service(None, 5, target, (12,))) as url:  # undefended: the target's softmax
        got = httpx.post(f"{url}/v1/predict", json={"inputs": x.tolist()}).json()["probabilities"]
        assert torch.allclose(torch.tensor(got), predict_proba(target, x), atol=1e-6)
    rounding = create_defense("rounding", decimals=2)
    with serving(Service(rounding, 5, target, (12,))) as url:
        got = httpx.post(f"{url}/v1/defend", json={"probabilities": probs.tolist()}).json()["probabilities"]
        assert torch.equal(torch.tensor(got), rounding(probs))
    torch.manual_seed(3)
    aeppt = AEPPT.from_substitute(SubstituteMIM(5), eps=1e-2, iters=5)
    with serving(Service(aeppt, 5, target, (12,), seed=7), max_wait_ms=0) as url:
        for k in range(3):  # one request at a time: request k is batch k, its stream (7, "serving", k)
            got = httpx.post(f"{url}/v1/defend", json={"probabilities": probs.tolist()}).json()["probabilities"]
            expected = aeppt.defend(probs, generator=stream(7, "serving", k)).defended
            assert torch.allclose(torch.tensor(got), expected, atol=1e-6)
        assert not torch.allclose(torch.tensor(got), aeppt.defend(probs, generator=stream(7, "serving", 0)).defended)


def test_a_keyed_defense_answers_a_repeated_query_the_same_whatever_came_between(target):
    from mia_fast.defenses.keyed import new_key

    probs = random_probs(3, 5, torch.Generator().manual_seed(2))
    others = random_probs(4, 5, torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    keyed = AEPPT.from_substitute(SubstituteMIM(5), eps=1e-2, iters=5, keyed=True, query_key=new_key(1))
    with serving(Service(keyed, 5, target, (12,), seed=7), max_wait_ms=0) as url:
        answers = []
        for batch in (probs, others, torch.cat([others[:1], probs])):  # other batches, other positions
            got = httpx.post(f"{url}/v1/defend", json={"probabilities": batch.tolist()}).json()["probabilities"]
            answers.append(torch.tensor(got)[-3:] if len(batch) == 4 else torch.tensor(got))
    assert torch.equal(answers[0], answers[2]) and not torch.equal(answers[0], probs)
    assert torch.allclose(answers[0], keyed.defend(probs).defended, atol=1e-6)


@pytest.mark.parametrize("endpoint, body, code, message", [
    ("defend", '{"probabilities": [[0.5, 0.5]]}', 400, "has 2 classes but the membership model expects 5"),
    ("defend", '{"probabilities": [[NaN, 0.5, 0.5, 0, 0]]}', 400, "row 0 contains NaN or Inf"),
    ("defend", '{"probabilities": [[1.5, -0.5, 0, 0, 0]]}', 400, "values outside [0, 1]"),
    ("defend", '{"probabilities": [[0.5, 0.5, 0, 0, 0], [1, 0]]}', 400, "rows must be lists of numbers of one length"),
    ("defend", '{"probabilities": []}', 400, "expected a non-empty list of rows"),
    ("defend", '{"inputs": [[1]]}', 400, "expected the key 'probabilities'"),
    ("defend", "not json", 400, "body: not JSON"),
    ("defend", json.dumps({"probabilities": [[0.2] * 5] * 400}), 413, "larger than 2000 bytes"),
    ("predict", '{"inputs": [[0.1, 0.2]]}', 400, "rows of 2 features, the target takes 12"),
    ("predict", '{"inputs": [[' + ",".join(["Infinity"] * 12) + "]]}", 400, "row 0 contains NaN or Inf"),
])
def test_bad_requests_get_a_one_line_4xx_and_the_server_stays_up(target, endpoint, body, code, message):
    with serving(Service(create_defense("rounding"), 5, target, (12,)), max_body_bytes=2000) as url:
        r = httpx.post(f"{url}/v1/{endpoint}", content=body, headers={"content-type": "application/json"})
        assert r.status_code == code and message in r.json()["error"] and "\n" not in r.json()["error"]
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
        ok = httpx.post(f"{url}/v1/defend", json={"probabilities": [[0.2] * 5]})
        assert ok.status_code == 200
        text = httpx.get(f"{url}/metrics").text
        assert f'mia_fast_requests_total{{endpoint="/v1/{endpoint}",code="{code}"}} 1' in text
        assert "mia_fast_errors_total 1" in text and "mia_fast_request_seconds_count 2" in text


class _Slow(OutputDefense):
    """Takes 0.2 s a batch: a queue of 2 overflows under 24 concurrent requests."""

    name = "slow-test-defense"
    keeps_label = True

    def _defend(self, probs, generator):
        time.sleep(0.2)
        return probs.clone()


def test_overload_gets_503_and_the_server_stays_up(target):
    probs = random_probs(1, 5, torch.Generator().manual_seed(4)).tolist()
    with serving(Service(_Slow(), 5, target, (12,)), max_batch=1, max_queue=2) as url:
        with httpx.Client() as client, ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(lambda _: client.post(f"{url}/v1/defend", json={"probabilities": probs},
                                                        timeout=30).status_code, range(24)))
        assert set(codes) == {200, 503} and codes.count(503) >= 10
        r = httpx.post(f"{url}/v1/defend", json={"probabilities": probs}, timeout=30)
        assert r.status_code == 200 and httpx.get(f"{url}/healthz").json()["waiting"] == 0


def test_concurrent_requests_share_batches_and_each_gets_its_own_rows(target):
    rounding = create_defense("rounding", decimals=3)
    rows = [random_probs(1 + k % 3, 5, torch.Generator().manual_seed(10 + k)) for k in range(32)]
    with serving(Service(rounding, 5, target, (12,)), max_batch=16, max_wait_ms=50) as url:
        with httpx.Client() as client, ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda p: client.post(f"{url}/v1/defend", json={"probabilities": p.tolist()},
                                                          timeout=30).json()["probabilities"], rows))
        metrics = httpx.get(f"{url}/metrics").text
    for p, got in zip(rows, answers):
        assert torch.equal(torch.tensor(got), rounding(p))
    count = int(next(line.split()[1] for line in metrics.splitlines() if line.startswith("mia_fast_batch_requests_count")))
    assert count < 32  # fewer calls than requests: some shared a batch


def test_serve_a_run_from_the_command_line_path(tmp_path):
    from mia_fast.pipeline import Config, RunDir, stage_target

    run = RunDir(tmp_path / "run", create=True)
    stage_target(run, Config(dataset="digits", members=100, nonmembers=100, target_epochs=2), log=lambda m: None,
                 progress=False)
    service = Service.from_run(run.path, "rounding", {"decimals": 1})
    from mia_fast.pipeline import load_run_dataset

    ds = load_run_dataset(run.config().resolved())
    members = torch.from_numpy(ds.x[run.splits().members[:5]])
    with serving(service) as url:
        got = httpx.post(f"{url}/v1/predict", json={"inputs": members.reshape(5, -1).tolist()}).json()
    served = create_defense("rounding", decimals=1)(run.output("members")[:5])
    assert torch.allclose(torch.tensor(got["probabilities"]), served, atol=1e-6)
    r = CliRunner().invoke(main, ["serve", "--run", str(run.path), "--param", "decimals=1"])
    assert r.exit_code == 1 and "--param needs --defense" in r.output
    before = sorted(p.name for p in run.path.rglob("*"))
    r = CliRunner().invoke(main, ["export", "--run", str(run.path), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "AOTInductor packages are .pt2 files" in r.output
    assert sorted(p.name for p in run.path.rglob("*")) == before and not (tmp_path / "m.onnx").exists()


def fitted_rank_template(per_class=False):
    template = torch.tensor([0.6, 0.2, 0.1, 0.06, 0.04])
    defense = create_defense("rank-template", per_class=per_class)
    defense.load_state_dict({"templates": template.expand(5 if per_class else 1, 5).clone()})
    return defense


def test_the_defended_model_exports_as_one_aotinductor_package(target, tmp_path):
    from mia_fast.serving.export import export_defended

    rank_template = fitted_rank_template()  # its fused op must trace as aten ops: the package loads without it
    x = torch.rand(33, 12, generator=torch.Generator().manual_seed(5))
    path = export_defended(target, rank_template, x[:2], tmp_path / "served.pt2")
    runner = torch._inductor.aoti_load_package(str(path))
    got, expected = runner(x), rank_template(predict_proba(target, x))  # any batch size, the library's answer
    assert got.shape == (33, 5) and torch.equal(got, expected)  # the template's values, in the target's ranks
    assert [p.name for p in tmp_path.iterdir()] == ["served.pt2"]  # nothing half-written beside it
    with pytest.raises(Exception, match="export: undrawn-test-defense does not export as one graph yet .it is randomized"):
        export_defended(target, _Undrawn(), x[:2], tmp_path / "undrawn.pt2")
    assert not (tmp_path / "undrawn.pt2").exists()


class _Undrawn(OutputDefense):
    """Randomized, and its draws cannot be given: refused by export."""

    name = "undrawn-test-defense"
    keeps_label = True
    randomized = True

    def _defend(self, probs, generator):
        return probs + 0 * torch.rand(probs.shape, generator=generator)


def fitted_hamp_output(keyed=False):
    defense = create_defense("hamp-output", bank_size=7, keyed=keyed)
    defense.load_state_dict({"bank": random_probs(7, 5, torch.Generator().manual_seed(8)).sort(1, descending=True).values})
    if keyed:
        defense.query_key = bytes(range(32))
    return defense


_MEMGUARD = {}


def fitted_memguard():
    """MemGuard on 5 classes, fitted once (small: 20 steps a round, a budget its coin matters for)."""
    if not _MEMGUARD:
        from mia_fast.testing import membership_records

        _MEMGUARD["defense"] = create_defense("memguard", classifier_epochs=15, iters=20, budget=0.05).fit(
            *membership_records(200, 0, classes=5), seed=0)
    return _MEMGUARD["defense"]


def test_a_randomized_defense_given_its_uniforms_answers_as_with_its_own_draws():
    probs = random_probs(50, 5, torch.Generator().manual_seed(4))
    torch.manual_seed(3)
    aeppt = AEPPT.from_substitute(SubstituteMIM(5), eps=1e-2, iters=6)
    uniforms = torch.rand(6, 50, generator=stream(1, "defend")).T  # what defend draws from the same stream
    drawn = aeppt.defend_drawn(probs, uniforms)
    assert torch.equal(drawn, aeppt.defend(probs, generator=stream(1, "defend")).defended)
    assert not torch.equal(drawn, probs)
    hamp = fitted_hamp_output(keyed=True)  # keyed: the uniforms come from the query's hash
    assert torch.equal(hamp.defend_drawn(probs, hamp.keyed_uniform(probs, 1).T), hamp.defend(probs).defended)
    ends = hamp.defend_drawn(probs[:2], torch.tensor([[0.0], [0.999]]))  # u -> bank row floor(u * 7)
    assert torch.equal(ends.sort(1, descending=True).values, hamp.bank[[0, 6]])
    assert torch.equal(ends.argsort(1), probs[:2].argsort(1))
    with pytest.raises(ValueError, match=r"uniforms must be \[B=50, 6\]"):
        aeppt.defend_drawn(probs, uniforms[:, :5])
    memguard = fitted_memguard()  # the uniform is phase II's coin
    coins = torch.rand(50, generator=stream(1, "defend"))[:, None]
    answer = memguard.defend(probs, generator=stream(1, "defend"))
    assert torch.equal(memguard.defend_drawn(probs, coins), answer.defended)
    assert 0 < int(answer.extras["noise_added"].sum()) < int(answer.extras["noise_found"].sum())
    assert torch.equal(memguard.defend_drawn(probs, torch.zeros(50, 1))[answer.extras["noise_found"]],
                       memguard.phase_one(probs)[0][answer.extras["noise_found"]])  # coin 0: always the noise


@pytest.mark.parametrize("name", ["aeppt", "hamp-output", "memguard"])
def test_a_randomized_defense_traces_with_its_uniforms_as_the_second_input(target, name, tmp_path):
    from mia_fast.serving.export import DefendedModel, export_defended

    torch.manual_seed(3)
    defense = {"aeppt": lambda: AEPPT.from_substitute(SubstituteMIM(5), eps=1e-2, iters=4),
               "hamp-output": fitted_hamp_output, "memguard": fitted_memguard}[name]()
    if name == "memguard":  # outputs of every confidence, as MemGuard's classifier was fitted on
        target = torch.nn.Linear(12, 5)
        target.weight.data *= 8
    x = torch.rand(40, 12, generator=torch.Generator().manual_seed(6))
    uniforms = torch.rand(40, defense.uniforms_per_answer, generator=torch.Generator().manual_seed(7))
    if name == "memguard":
        uniforms = uniforms * 0.1  # small coins: most answers get their noise (the budget is small)
    batch = torch.export.Dim("batch", min=2, max=1024)
    program = torch.export.export(DefendedModel(target, defense), (x[:2], uniforms[:2]),
                                  dynamic_shapes={"x": {0: batch}, "uniforms": {0: batch}})
    assert all(not str(node.target).startswith("mia_fast") for node in program.graph.nodes)
    expected = defense.defend_drawn(predict_proba(target, x), uniforms)
    torch.testing.assert_close(program.module()(x, uniforms), expected, atol=1e-6, rtol=0)
    if name == "memguard":
        assert any("while_loop" in str(node.target) for node in program.graph.nodes)  # not unrolled
        assert bool((expected != predict_proba(target, x)).any(1).float().mean() > 0.2)  # noise was served
    if name != "hamp-output":  # compiled: AEPPT's unrolled loop (compile time grows with iters), MemGuard's while_loop
        runner = torch._inductor.aoti_load_package(str(export_defended(target, defense, x[:2], tmp_path / "a.pt2")))
        torch.testing.assert_close(runner(x, uniforms), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["rounding", "topk", "label-only", "rank-template[per_class]"])
def test_every_deterministic_output_defense_traces_as_one_graph_that_answers_like_the_library(target, name):
    from mia_fast.serving.export import DefendedModel

    defense = (fitted_rank_template(per_class=True) if name == "rank-template[per_class]"
               else create_defense(name, **({"decimals": 2} if name == "rounding" else {"k": 2} if name == "topk" else {})))
    assert not defense.randomized
    x = torch.rand(40, 12, generator=torch.Generator().manual_seed(6))
    program = torch.export.export(DefendedModel(target, defense), (x[:2],),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2, max=1024)}})
    assert all(not str(node.target).startswith("mia_fast") for node in program.graph.nodes)
    assert torch.equal(program.module()(x), defense(predict_proba(target, x)))
