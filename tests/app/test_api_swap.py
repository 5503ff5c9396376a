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
from tests.waiting import wait_until


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
        wait_until(lambda: served.version_id in versions, 10, "an answer of the first version")
        activate_in_store(served, second)
        wait_for_version(client, second)
        wait_until(lambda: second in versions, 10, "the clients to get the second version")
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


def test_a_version_that_failed_to_load_serves_once_restored_and_activated_again(
    client: TestClient, served, tiny_model, tmp_path: Path
) -> None:
    copy = copy_checkpoint(tiny_model, tmp_path)
    weights = Path(copy.path) / "weights.safetensors"
    sound = weights.read_bytes()
    weights.write_bytes(sound[:-8] + bytes(range(8)))
    bad = register_result(served.url, copy, activate=False)
    activate_in_store(served, bad)  # the process fails to load it and marks it failed
    deadline = time.monotonic() + 10
    while "last_failure" not in client.get("/readyz").json()["model"]:
        assert time.monotonic() < deadline, "the load never failed"
        time.sleep(0.05)
    weights.write_bytes(sound)

    r = client.post(f"/v1/admin/models/{bad}/activate", headers=admin_headers())
    assert r.status_code == 200, r.text
    assert client.get("/v1/users/2/recommendations").json()["model_version"] == bad
    assert "last_failure" not in client.get("/readyz").json()["model"]


def test_a_load_failure_is_reported_only_once_the_version_is_marked_failed_in_the_store(
    served, tiny_model, tmp_path: Path
) -> None:
    """``/readyz`` naming a failed load means the store says so too (no window between them)."""
    from sqlalchemy import text

    from app.observability import Metrics
    from app.serving import ModelHolder

    bad = register_result(served.url, copy_checkpoint(tiny_model, tmp_path), activate=False)
    activate_in_store(served, bad)
    loading = threading.Event()

    def failing_loader(path: str, device: str) -> Any:
        loading.set()
        raise RuntimeError("the disk is gone")

    holder = ModelHolder(served.engine, device="cpu", metrics=Metrics(), loader=failing_loader)
    with served.engine.connect() as blocker:
        # Another transaction holds the version's row: marking it failed has to wait.
        blocker.execute(text("UPDATE model_versions SET note = 'busy' WHERE id = :id"), {"id": bad})
        refresh = threading.Thread(target=holder.refresh)
        refresh.start()
        assert loading.wait(10)
        refresh.join(timeout=0.5)  # long enough to reach the blocked write
        assert refresh.is_alive()
        assert holder.last_failure is None  # not reported while the store does not say it
        blocker.rollback()
    refresh.join(timeout=30)
    assert holder.last_failure is not None and holder.last_failure.version_id == bad
    with Session(served.engine) as session:
        version = session.get(ModelVersion, bad)
        assert version is not None and version.status == "failed"


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


def test_titles_and_genres_changed_by_an_import_show_everywhere_without_a_restart(
    client: TestClient, served, tmp_path: Path
) -> None:
    from app.ingest.formats import custom_csv
    from app.ingest.importer import import_dataset

    def all_items() -> list[dict[str, Any]]:
        """What the model routes show: a user's list, similar films, a genre filter."""
        mine = client.get("/v1/users/2/recommendations", params={"n": 100}).json()["items"]
        similar = client.get("/v1/movies/1/similar", params={"n": 100}).json()["items"]
        return mine + similar

    assert all(i["title"].startswith("Film ") for i in all_items())
    # The same movies (same count, same largest id) with new titles and, for 16-30, a new genre.
    movies = tmp_path / "movies.csv"
    movies.write_text(
        "movie_id,title,genres\n"
        + "".join(
            f"{m},Renamed {m:02d} ({1980 + m}),{'Action|Comedy' if m < 16 else 'Western'}\n"
            for m in range(1, 31)
        )
    )
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("user_id,movie_id,rating\n2,1,4.0\n")
    import_dataset(served.url, custom_csv(ratings, movies), progress=False)
    assert client.get("/v1/movies/20").json()["genres"] == ["Western"]  # read from the store

    visitor = {"ratings": [{"movie_id": 1, "rating": 5}], "n": 100, "genres": ["Western"]}
    deadline = time.monotonic() + 10
    while any(i["title"].startswith("Film ") for i in all_items()):
        assert time.monotonic() < deadline, "the new titles never reached the model routes"
        time.sleep(0.05)
    assert all(i["title"].startswith("Renamed ") for i in all_items())
    western = client.post("/v1/recommendations", json=visitor).json()["items"]
    assert {i["movie_id"] for i in western} == set(range(16, 31))
    assert all(i["genres"] == ["Western"] for i in western)
    # Drama is gone from the catalogue: the filter now names a genre it does not have.
    drama = client.post("/v1/recommendations", json={**visitor, "genres": ["Drama"]})
    assert drama.status_code == 422
    assert "Western" in drama.json()["detail"] and "Drama" in drama.json()["detail"]


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
