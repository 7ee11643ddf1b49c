"""The weight-sync transports by name; the NCCL one says at run time that no GPU check has run it yet."""

import logging

import pytest

from r1v_ray.engines.sync import NCCLSync, ObjectStoreSync, make_sync


def test_nccl_sync_warns_that_it_is_unverified_and_object_store_does_not(caplog):
    with caplog.at_level(logging.WARNING, logger="r1v_ray.engines.sync"):
        assert isinstance(make_sync("object_store"), ObjectStoreSync)
        assert not caplog.records
        assert isinstance(make_sync("nccl", 2), NCCLSync)
    assert any("weight_sync=nccl has not been run" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="object_store"):
        make_sync("gloo")
