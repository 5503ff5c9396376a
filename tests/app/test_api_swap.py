"""Hot swaps: every API process follows the active version without a restart."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.db.models import ModelVersion
from app.main import create_app
from app.services import registry
from tests.app.test_api_helpers import *  # noqa: F403 - fixtures
from tests.app.test_api_helpers import (
    NEW_USER,
    admin_headers,
    app_settings,
    copy_checkpoint,
    register_result,
    train_tiny,
)


def wait_for_version(client: TestClient, version: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/v1/users/2/recommendations").json()["model_version"] == version:
            return
        time.sleep(0.05)
    raise AssertionError(f"version {version} was not swapped in within {timeout} s")


def activate_in_store(served, version_id: int) -> None:
    """Activate as another process would (e.g. the worker or another replica's admin call)."""
    with Session(served.engine) as session, session.begin():
        registry.activate(session, version_id)


def test_a_version_activated_elsewhere_is_swapped_in_while_serving(
    client: TestClient, served, tiny_model, tmp_path: Path
) -> None:
    second = register_result(served.url, copy_checkpoint(tiny_model, tmp_path), activate=False)
    errors: list[str] = []
    versions: set[int] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = client.get("/v1/users/2/recommendations", params={"n": 5})
            if r.status_code != 200 or len(r.json()["items"]) != 5:
                errors.append(f"{r.status_code} {r.text[:200]}")
            else:
                versions.add(r.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        activate_in_store(served, second)
        wait_for_version(client, second)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert versions == {served.version_id, second}
    assert client.get("/readyz").json()["model"]["version"] == second


def test_a_version_that_fails_to_load_is_marked_failed_and_the_old_one_serves(
    client: TestClient, served, tiny_model, tmp_path: Path
) -> None:
    bad = register_result(
        served.url, copy_checkpoint(tiny_model, tmp_path, corrupt=True), activate=False
    )
    activate_in_store(served, bad)  # bypasses the admin route's verification
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ready = client.get("/readyz").json()
        if "last_failure" in ready["model"]:
            break
        time.sleep(0.05)
    assert ready["model"]["last_failure"]["version"] == bad
    assert ready["model"]["version"] == served.version_id
    assert client.get("/readyz").status_code == 200
    body = client.get("/v1/users/2/recommendations").json()
    assert body["model_version"] == served.version_id
    with Session(served.engine) as session:
        failed = session.get(ModelVersion, bad)
        assert failed is not None and failed.status == "failed" and "load" in (failed.note or "")
        assert registry.active_version(session).id == served.version_id  # type: ignore[union-attr]
    assert "movierec_model_load_failures_total 1.0" in client.get("/metrics").text
    models = client.get("/v1/admin/models", headers=admin_headers()).json()
    assert models["active"] == served.version_id


def test_the_catalogue_is_reloaded_when_movies_are_added(client: TestClient, served) -> None:
    from app.db.models import Movie

    body = {"ratings": [{"movie_id": 31, "rating": 4.0}], "n": 3}
    assert client.post("/v1/recommendations", json=body).status_code == 404
    with Session(served.engine) as session, session.begin():
        session.add(Movie(id=31, title="Film 31", year=2011, genres="Drama"))
    deadline = time.monotonic() + 10
    while client.post("/v1/recommendations", json=body).status_code != 200:
        assert time.monotonic() < deadline, "the new movie never reached the catalogue"
        time.sleep(0.05)
    # A movie the model has never seen is accepted in a visitor's ratings and never recommended.
    items = client.post("/v1/recommendations", json={**body, "n": 100}).json()["items"]
    assert 31 not in {i["movie_id"] for i in items}


def test_start_up_objects_are_frozen_and_a_swapped_out_model_is_collected(
    client: TestClient, served, tiny_model, tmp_path: Path
) -> None:
    # The lifespan froze what was alive at start, so full collections skip it ...
    assert gc.get_freeze_count() > 0
    first = client.app.state.holder.state.recommender  # type: ignore[attr-defined]
    # ... but the model was loaded after the freeze: the collector still sees it
    assert any(o is first for o in gc.get_objects())
    gone = weakref.ref(first)
    del first
    second = register_result(served.url, copy_checkpoint(tiny_model, tmp_path), activate=False)
    activate_in_store(served, second)
    wait_for_version(client, second)
    gc.collect()
    assert gone() is None  # the swapped-out model is freed


def answer_of(response: Any) -> tuple[int, str, list[tuple[int, float, float]]]:
    """(model version, source, [(movie, score, predicted rating)]), floats rounded: the
    carried answers are scored in one batch, a computed one alone."""
    body = response.json()
    items = [
        (i["movie_id"], round(i["score"], 4), round(i["predicted_rating"] or 0.0, 4))
        for i in body["items"]
    ]
    return body["model_version"], body["source"], items


def test_a_swap_carries_the_recent_answers_over_computed_with_the_new_model(
    client: TestClient, served, tmp_path: Path
) -> None:
    memo = client.app.state.memo  # type: ignore[attr-defined]
    holder = client.app.state.holder  # type: ignore[attr-defined]
    urls = [
        "/v1/users/2/recommendations?n=3",
        "/v1/users/3/recommendations?n=2&offset=1&genres=Drama",
        f"/v1/users/{NEW_USER}/recommendations?n=4",  # no ratings: popular films
    ]
    before = [answer_of(client.get(url)) for url in urls]
    # A different model: another seed, another number of epochs.
    (tmp_path / "second").mkdir()
    trained = train_tiny(served.url, tmp_path / "second" / "models", epochs=3, seed=1)
    second = register_result(served.url, trained, activate=False)
    activate_in_store(served, second)
    deadline = time.monotonic() + 10
    while holder.state.version_id != second and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.state.version_id == second
    hits, misses = memo.hits, memo.misses
    carried = [answer_of(client.get(url)) for url in urls]
    assert (memo.hits - hits, memo.misses - misses) == (len(urls), 0)  # all in the memo
    settings = app_settings(served.url, tmp_path, result_memo_size=0)
    with TestClient(create_app(settings)) as computed:
        assert carried == [answer_of(computed.get(url)) for url in urls]
    assert [a[0] for a in carried] == [second] * len(urls)
    assert [a[2] for a in carried] != [b[2] for b in before]  # the new model's answers
