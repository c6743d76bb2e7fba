"""Contract: what our batch writer puts in Redis, Feast's `get_online_features` reads back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import cast

import numpy as np
import pytest

from skewless import feature_store
from skewless.online_store import OnlineView
from skewless.services import redis_server
from skewless.settings import Settings, load_settings

pytestmark = pytest.mark.integration

IDS = [900_010, 900_011, 900_012, 900_013, 900_014]
"""Entity ids no simulated data set uses, so other tests' rows cannot interfere."""
NEVER_WRITTEN = 900_099


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def applied(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """The repository applied against the session's single Redis, then its Redis Cluster
    (Feast's online store then reads with `redis_type: redis_cluster`); the settings Feast
    exported to the process are taken back afterwards."""
    saved = dict(os.environ)
    name = "redis_service" if request.param == "redis" else "redis_cluster_service"
    server = cast(Settings, request.getfixturevalue(name))
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("online") / "data",
        runtime_dir=server.runtime_dir,
        redis_port=server.redis_port,
        redis_cluster=server.redis_cluster,
    )
    feature_store.apply(settings)
    yield settings
    os.environ.clear()
    os.environ.update(saved)


def test_redis_key_is_feasts(applied: Settings) -> None:
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    view = OnlineView.of("skewless", feature_store.load_declarations(applied)[0])
    for entity_id in (0, 1, 4999, -7, 2**40):
        expected = _redis_key(
            "skewless",
            EntityKey(join_keys=[view.join_key], entity_values=[Value(int64_val=entity_id)]),
            entity_key_serialization_version=3,
        )
        assert view.redis_key(entity_id) == expected


def test_get_online_features_reads_what_the_batch_writer_wrote(applied: Settings) -> None:
    store = feature_store.open_store(applied)
    client = redis_server.client(applied)
    customers, terminals = feature_store.load_declarations(applied)
    views = {d.entity_key: OnlineView.of(store.project, d) for d in (customers, terminals)}
    rng = np.random.default_rng(3)
    written: dict[str, np.ndarray] = {}
    when = [datetime(2026, 9, 30, 12, tzinfo=UTC) + timedelta(seconds=i) for i in range(5)]
    for key, view in views.items():
        values = rng.uniform(0, 100, size=(5, len(view.features)))
        values[:, list(view.is_count)] = np.round(values[:, list(view.is_count)])
        view.write(client, IDS, values, when)
        written[key] = values
        read_back, stamps = view.read(client, [*IDS, NEVER_WRITTEN])
        np.testing.assert_array_equal(read_back[:5], values)
        assert np.isnan(read_back[5]).all()
        assert stamps[:5] == when
        assert stamps[5] is None

    rows = [
        {"customer_id": IDS[i], "terminal_id": IDS[i], "tx_amount": 12.5, "tx_datetime": when[i]}
        for i in range(5)
    ]
    online = store.get_online_features(
        features=store.get_feature_service("fraud_model_v1"), entity_rows=rows
    ).to_dict()
    for key, view in views.items():
        for column, name in enumerate(view.features):
            assert online[name] == pytest.approx(written[key][:, column].tolist(), rel=0, abs=0)
    assert online["amount"] == [12.5] * 5


def test_hand_written_protobuf_bytes_equal_feasts() -> None:
    from feast.protos.feast.types.Value_pb2 import Value
    from google.protobuf.timestamp_pb2 import Timestamp

    view = OnlineView("p", "v", "k", ("n", "x"), (True, False))
    for count, mean, when in [
        (0, 0.0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1, -2.5, datetime(2026, 9, 30, 12, 0, 0, 123456, tzinfo=UTC)),
        (2**40, 1e300, datetime(2030, 1, 1, tzinfo=UTC)),
        (-3, float("inf"), datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ]:
        fields = view.encode([count, mean], when)
        keys = list(fields)
        assert fields[keys[0]] == Value(int64_val=count).SerializeToString()
        assert fields[keys[1]] == Value(double_val=mean).SerializeToString()
        stamp = Timestamp()
        stamp.FromDatetime(when)
        assert fields[view.timestamp_field] == stamp.SerializeToString()
