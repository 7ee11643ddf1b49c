"""init_ray's defaults for Ray Data: rows in input order, parquet through the V1 reader unless the environment
picks one."""

import pytest
import ray
from ray.data import DataContext

from r1v_ray.ray_connect import init_ray, ray_data_defaults


@pytest.fixture
def context(monkeypatch):
    ctx = DataContext.get_current()
    monkeypatch.setattr(ctx, "use_datasource_v2", True)
    monkeypatch.setattr(ctx.execution_options, "preserve_order", False)
    monkeypatch.delenv("RAY_DATA_USE_DATASOURCE_V2", raising=False)
    return ctx


def test_passes_keep_input_order_and_read_parquet_through_v1_unless_the_environment_picks(context, monkeypatch):
    ray_data_defaults()
    assert context.execution_options.preserve_order is True
    assert context.use_datasource_v2 is False
    context.use_datasource_v2 = True
    monkeypatch.setenv("RAY_DATA_USE_DATASOURCE_V2", "1")
    ray_data_defaults()
    assert context.use_datasource_v2 is True


def test_init_ray_sets_them_even_when_ray_is_up(context, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert init_ray() is None
    assert context.use_datasource_v2 is False and context.execution_options.preserve_order is True
