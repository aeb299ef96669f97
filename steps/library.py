"""The one step library: each step is written once, against a :class:`World`.

``steps/behave_bridge.py`` registers these for behave and ``tests/bdd/conftest.py`` for
pytest-bdd; both use ``parse`` patterns, so a feature line matches the same step in either
runner. Step bodies stay thin: the work is in :mod:`steps.world`.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from steps.world import World


@dataclass(frozen=True)
class StepDef:
    keyword: str  # "given" | "when" | "then"
    pattern: str
    func: Callable[..., None]


STEPS: list[StepDef] = []


def _register(keyword: str, pattern: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        STEPS.append(StepDef(keyword, pattern, func))
        return func

    return decorate


def given(pattern: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return _register("given", pattern)


def when(pattern: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return _register("when", pattern)


def then(pattern: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return _register("then", pattern)


# --- the server --------------------------------------------------------------------------


@given("a running orchestratord with a Ready llama.cpp pool")
def running_server(world: World) -> None:
    world.require_ready_pool()


# --- submitting ----------------------------------------------------------------------------


@when("I submit a valid completion task")
def submit_valid(world: World) -> None:
    world.submit()


@when("I submit a valid completion task using every optional field")
def submit_every_field(world: World) -> None:
    world.submit(
        determinism="best_effort",
        sampler_profile_version="v1",
        expected_tokens=16,
        kv_hint="reuse",
    )


@when("I submit a completion task for {tokens:d} fixed-length tokens with seed {seed:d}")
def submit_fixed(world: World, tokens: int, seed: int) -> None:
    world.submit(max_tokens=tokens, seed=seed, sampler_profile_version="fixed-length")


@when("I submit a strict completion task for {tokens:d} fixed-length tokens with seed {seed:d}")
def submit_strict(world: World, tokens: int, seed: int) -> None:
    world.submit(
        max_tokens=tokens, seed=seed, sampler_profile_version="fixed-length", determinism="strict"
    )


@when("I start a long task that keeps the pool busy")
def start_long_task(world: World) -> None:
    world.start_background_task()


@when("I submit a completion task for {tokens:d} fixed-length tokens")
def submit_fixed_unseeded(world: World, tokens: int) -> None:
    world.submit(max_tokens=tokens, sampler_profile_version="fixed-length")


@when("I submit a task whose {field} is {value}")
def submit_with_field(world: World, field: str, value: str) -> None:
    world.submit_variant(field, value)


@when("I submit a task whose prompt needs more tokens than its ctx allows")
def submit_prompt_beyond_ctx(world: World) -> None:
    world.submit(ctx=64, max_tokens=60, prompt="word " * 50)


@when("I submit a task body of {size:d} bytes")
def submit_large(world: World, size: int) -> None:
    world.submit_raw_padded(size)


@when("I submit the same task again")
def submit_again(world: World) -> None:
    world.resubmit_last()


@when("I submit long tasks until the queue is full")
def fill_queue(world: World) -> None:
    world.fill_queue()


@then("the pool accepted exactly its slots plus its queue capacity")
def accepted_exactly_capacity(world: World) -> None:
    world.expect_accepted_capacity()


@when("I submit a task without a token")
def submit_without_token(world: World) -> None:
    world.submit(auth=False)


@when("I submit a task with a wrong token")
def submit_wrong_token(world: World) -> None:
    world.submit(auth="wrong-token-value")


@when('I submit a task with X-Correlation-Id "{value}"')
def submit_with_correlation(world: World, value: str) -> None:
    world.submit(correlation_id=value)


@when('I submit a task without a token and with X-Correlation-Id "{value}"')
def submit_unauthenticated_with_correlation(world: World, value: str) -> None:
    world.submit(auth=False, correlation_id=value)


# --- streaming and cancel ---------------------------------------------------------------------


@when("I read the task's stream to the end")
def read_stream(world: World) -> None:
    world.read_stream()


@when("I open the stream of an unknown task")
def stream_unknown(world: World) -> None:
    world.open_unknown_stream()


@when("I read {count:d} token frames and cancel the task")
def read_then_cancel(world: World, count: int) -> None:
    world.read_then_cancel(count)


@when("I read {count:d} token frame and disconnect")
def read_then_disconnect(world: World, count: int) -> None:
    world.read_then_disconnect(count)


@when("I remember the streamed text as {name}")
def remember_text(world: World, name: str) -> None:
    world.remember_text(name)


@when("I ask for the capabilities")
def ask_capabilities(world: World) -> None:
    world.get("/v1/capabilities")


@when('I ask for the health of pool "{pool_id}"')
def ask_pool_health(world: World, pool_id: str) -> None:
    world.get(f"/v1/pools/{pool_id}/health")


@when("I scrape the metrics")
def scrape_metrics(world: World) -> None:
    world.scrape_metrics()


# --- outcomes ------------------------------------------------------------------------------


@then("the response status is {status:d}")
def response_status(world: World, status: int) -> None:
    world.expect_status(status)


@then('the error code is "{code}"')
def error_code(world: World, code: str) -> None:
    world.expect_error(code)


@then('the error message mentions "{text}"')
def error_mentions(world: World, text: str) -> None:
    world.expect_error_message(text)


@then("the body matches the {schema} contract schema")
def body_matches(world: World, schema: str) -> None:
    world.expect_body_schema(schema)


@then("the admission says where the task waits and when it should start")
def admission_metadata(world: World) -> None:
    world.expect_admission_metadata()


@then('the response has header "{name}"')
def has_header(world: World, name: str) -> None:
    world.expect_header(name)


@then('the response header "{name}" is "{value}"')
def header_is(world: World, name: str, value: str) -> None:
    world.expect_header(name, value)


@then("the response carries a generated correlation ID")
def generated_correlation(world: World) -> None:
    world.expect_generated_correlation_id()


@then('the error policy_label is "{label}"')
def policy_label(world: World, label: str) -> None:
    world.expect_policy_label(label)


@then('the first frame is "{event}"')
def first_frame(world: World, event: str) -> None:
    world.expect_first_frame(event)


@then('the stream has at least {count:d} "{event}" frame')
def at_least_frames(world: World, count: int, event: str) -> None:
    world.expect_at_least(event, count)


@then("the stream ends with exactly one terminal frame, an end")
def one_end(world: World) -> None:
    world.expect_single_end()


@then("the end frame counts every token frame")
def end_counts(world: World) -> None:
    world.expect_end_counts_tokens()


@then('the end frame says finish_reason "{reason}"')
def end_reason(world: World, reason: str) -> None:
    world.expect_finish_reason(reason)


@then("every frame matches its contract schema")
def frames_match(world: World) -> None:
    world.expect_frames_match_contract()


@then("no token frame followed the cancel")
def no_token_after_cancel(world: World) -> None:
    world.expect_no_token_after_cancel()


@then("the engine reports every slot idle")
def engine_idle(world: World) -> None:
    world.expect_engine_idle()


@then("the task was canceled by the disconnect")
def canceled_by_disconnect(world: World) -> None:
    world.expect_canceled_after_disconnect()


@then("{first} and {second} are the same text")
def same_text(world: World, first: str, second: str) -> None:
    world.expect_texts(first, second, equal=True)


@then("{first} and {second} are different texts")
def different_text(world: World, first: str, second: str) -> None:
    world.expect_texts(first, second, equal=False)


@then("the pool is live and Ready with no last error")
def pool_ready(world: World) -> None:
    world.expect_pool_ready()


@then("the capabilities api_version equals the OpenAPI info.version")
def api_version(world: World) -> None:
    world.expect_api_version()


@then("the capabilities list the pool with its slots and readiness")
def pool_listed(world: World) -> None:
    world.expect_pool_capability()


@then('the metrics include "{name}" with labels {labels}')
def metric_labels(world: World, name: str, labels: str) -> None:
    world.expect_metric(name, [label.strip() for label in labels.split(",")])


def step_kwargs(func: Callable[..., None]) -> list[str]:
    """The parse fields a step takes besides the world (for the pytest-bdd bridge)."""
    return [name for name in inspect.signature(func).parameters if name != "world"]


# --- placement on a mixed-GPU box ------------------------------------------------------------


@given('orchestratord serving the example config "{name}"')
def serve_example(world: World, name: str) -> None:
    world.box.load(name)
    world.box.serve()


@given('the example config "{name}"')
def load_example(world: World, name: str) -> None:
    world.box.load(name)


@given('a pool "{pool_id}" for a 7B f16 model with ctx 4096 on devices 0 and 1')
def add_big_pool(world: World, pool_id: str) -> None:
    world.box.add_seven_b_pool(pool_id, [0, 1])


@when("I list the replica sets")
def list_replica_sets(world: World) -> None:
    world.box.list_replica_sets()


@when("I plan the placement")
def plan_placement(world: World) -> None:
    world.box.run_plan()


@when("I start {count:d} long tasks at once")
def start_long_tasks(world: World, count: int) -> None:
    world.box.start_long_tasks(count)


@then('pool "{pool_id}" has a Ready replica on GPU {first:d} and one on GPU {second:d}')
def replicas_on_both(world: World, pool_id: str, first: int, second: int) -> None:
    replicas = world.box.replicas(pool_id)
    placed = sorted([d["index"] for d in r["devices"]] for r in replicas if r["ready"])
    assert placed == [[first], [second]], replicas


@then("the replicas on GPU {first:d} and GPU {second:d} are both decoding")
def both_decoding(world: World, first: int, second: int) -> None:
    by_device = {r["devices"][0]["index"]: r["id"] for r in world.box.replicas("chat")}
    world.box.wait_all_decoding([by_device[first], by_device[second]])


@then("the metrics count started tasks on both replicas")
def started_on_both(world: World) -> None:
    started = world.box.started_per_replica()
    assert started.get("chat-r0", 0) >= 1 and started.get("chat-r1", 0) >= 1, started


@then('the plan puts pool "{pool_id}" only on GPU {device:d}')
def planned_only_on(world: World, pool_id: str, device: int) -> None:
    assert world.box.planned_devices(pool_id) == [[device]], world.box.plan


@then('the plan puts pool "{pool_id}" on GPU {first:d} and GPU {second:d}')
def planned_on_both(world: World, pool_id: str, first: int, second: int) -> None:
    assert sorted(world.box.planned_devices(pool_id)) == [[first], [second]], world.box.plan


# --- the control plane -----------------------------------------------------------------------


@when('I drain pool "{pool_id}" with a deadline of {deadline_ms:d} ms')
def drain_pool(world: World, pool_id: str, deadline_ms: int) -> None:
    world.post(f"/v1/pools/{pool_id}/drain", {"deadline_ms": deadline_ms})


@when('I resume pool "{pool_id}"')
def resume_pool(world: World, pool_id: str) -> None:
    world.post(f"/v1/pools/{pool_id}/resume")


@then('the health of pool "{pool_id}" says draining is {value}')
def health_draining(world: World, pool_id: str, value: str) -> None:
    world.get(f"/v1/pools/{pool_id}/health")
    assert world._response().json()["draining"] is (value == "true")


@when('I register the model "{model_id}" with a made-up digest')
def register_model(world: World, model_id: str) -> None:
    world.post("/v1/catalog/models", {"id": model_id, "digest": "sha256:" + "cd" * 32})


@when('I set the state of model "{model_id}" to "{state}"')
def set_model_state(world: World, model_id: str, state: str) -> None:
    world.post(f"/v1/catalog/models/{model_id}/state", {"state": state})


@when('I submit a task for model "{model_ref}"')
def submit_for_model(world: World, model_ref: str) -> None:
    world.submit(model_ref=model_ref)


@when('I read model "{model_id}"')
def read_model(world: World, model_id: str) -> None:
    world.get(f"/v1/catalog/models/{model_id}")


@when('I store a plan artifact tagged "{tag}"')
def store_plan(world: World, tag: str) -> None:
    world.post("/v1/artifacts", {"kind": "plan", "content": {"tag": tag}, "tags": [tag]})
    world.remembered["artifact"] = str(world._response().json().get("id"))


@when("I store the same plan artifact again")
def store_plan_again(world: World) -> None:
    previous = world.remembered["artifact"]
    tag = world._response().json()["tags"][0]
    store_plan(world, tag)
    assert world.remembered["artifact"] == previous, "a re-post must answer the same id"


@when("I read the stored artifact")
def read_artifact(world: World) -> None:
    world.get(f"/v1/artifacts/{world.remembered['artifact']}")


# --- sessions and the fetch tool ---------------------------------------------------------------


@when("I submit a valid completion task in a new session")
def submit_in_new_session(world: World) -> None:
    world.remembered["session"] = str(uuid.uuid4())
    world.submit(session_id=world.remembered["session"])


@when("I submit another task in that session")
def submit_in_that_session(world: World) -> None:
    world.submit(session_id=world.remembered["session"])


@when("I read that session")
def read_session(world: World) -> None:
    world.get(f"/v1/sessions/{world.remembered['session']}")


@when("I end that session")
def end_session(world: World) -> None:
    world.response = world.client.delete(
        f"/v1/sessions/{world.remembered['session']}", headers=world.server.auth
    )


@when('I ask the fetch tool for "{url}"')
def tool_fetch(world: World, url: str) -> None:
    world.post("/v1/tools/fetch", {"url": url})


@then("the tool audit log's last record is a denial")
def audit_denial(world: World) -> None:
    path = world.server.workdir / "state" / "tool-audit.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[-1].get("outcome") == "refused", records[-1]
    decisions = [r for r in records if "decision" in r]
    assert decisions[-1]["decision"] == "deny" and decisions[-1]["reason"], decisions[-1]


# --- models on demand ----------------------------------------------------------------------


@given('the models-on-demand example with model "{name}" broken')
def on_demand_broken(world: World, name: str) -> None:
    world.demand.break_model(name)


@given("orchestratord serving the models-on-demand example")
def serve_on_demand(world: World) -> None:
    world.demand.serve()


@then("no model is loaded")
def none_loaded(world: World) -> None:
    states = world.demand.residency()
    assert all(s["state"] == "unloaded" and not s["replicas"] for s in states.values()), states


@when('I run a task for "{model}"')
def run_for(world: World, model: str) -> None:
    world.demand.run(model)


@when('I start a long task for "{model}"')
def start_long_for(world: World, model: str) -> None:
    world.demand.start_long(model)


@when("I cancel the running task")
def cancel_running(world: World) -> None:
    world.demand.cancel_running()


@when('I stop "{model}"')
def stop_model(world: World, model: str) -> None:
    world.demand.stop(model)


@then('the stream for "{model}" said queued, then loading, then started, then end')
def waited_in_order(world: World, model: str) -> None:
    events = [event for event, _ in world.demand.frames[model]]
    waiting = events[: events.index("started")]
    assert waiting and waiting[0] == "queued" and "loading" in waiting, events
    assert set(waiting) <= {"queued", "loading"}, events
    assert events[-1] == "end" and events.count("end") == 1, events


@then('the stream for "{model}" ended with error {code}')
def stream_error(world: World, model: str, code: str) -> None:
    event, payload = world.demand.frames[model][-1]
    assert event == "error" and payload["code"] == code, (event, payload)


@then('"{model}" is loaded on GPU {index:d}')
def loaded_on(world: World, model: str, index: int) -> None:
    state = world.demand.residency()[model]
    devices = [d["index"] for r in state["replicas"] for d in r["devices"]]
    assert state["state"] == "loaded" and devices == [index], state


@then('"{model}" is unloaded')
def unloaded(world: World, model: str) -> None:
    world.demand.wait_state(model, "unloaded")


@then('"{model}" failed to load, saying why')
def failed_load(world: World, model: str) -> None:
    state = world.demand.residency()[model]
    assert state["state"] == "failed" and state["failure"], state
    assert state["failed_until_ms"] is not None, state


@then('a new task for "{model}" is refused with {status:d} {code}')
def refused_with(world: World, model: str, status: int, code: str) -> None:
    world.demand.submit(model)
    response = world.demand.response
    assert response is not None and response.status_code == status, response
    assert response.json()["code"] == code, response.text


@then("the stop is answered {status:d}")
def stop_answered(world: World, status: int) -> None:
    response = world.demand.response
    assert response is not None and response.status_code == status, response


@then('the stop is refused with {status:d} saying "{text}"')
def stop_refused(world: World, status: int, text: str) -> None:
    response = world.demand.response
    assert response is not None and response.status_code == status, response
    assert text in response.json()["message"], response.text


@then('the metrics count {count:d} unload of "{model}" for "{reason}"')
def unload_counted(world: World, count: int, model: str, reason: str) -> None:
    seen = world.demand.metric("model_unloads_total", pool_id=model, reason=reason)
    assert seen == count, seen
