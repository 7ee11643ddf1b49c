"""init_ray's defaults for Ray Data: parquet reads through the V1 reader unless the environment picks one."""

import ray
from ray.data import DataContext

from r1v_ray.ray_connect import init_ray, use_parquet_reader_v1


def test_parquet_reads_take_the_v1_reader_unless_the_environment_picks(monkeypatch):
    ctx = DataContext.get_current()
    monkeypatch.setattr(ctx, "use_datasource_v2", True)
    monkeypatch.delenv("RAY_DATA_USE_DATASOURCE_V2", raising=False)
    use_parquet_reader_v1()
    assert ctx.use_datasource_v2 is False
    ctx.use_datasource_v2 = True
    monkeypatch.setenv("RAY_DATA_USE_DATASOURCE_V2", "1")
    use_parquet_reader_v1()
    assert ctx.use_datasource_v2 is True


def test_init_ray_sets_the_reader_even_when_ray_is_up(monkeypatch):
    ctx = DataContext.get_current()
    monkeypatch.setattr(ctx, "use_datasource_v2", True)
    monkeypatch.delenv("RAY_DATA_USE_DATASOURCE_V2", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert init_ray() is None
    assert ctx.use_datasource_v2 is False
