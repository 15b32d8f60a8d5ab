import jax


def test_eight_host_devices():
    assert jax.device_count() == 8
    assert jax.devices()[0].platform == "cpu"
