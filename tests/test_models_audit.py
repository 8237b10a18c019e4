"""regnet_ext.models' complexity API as a user calls it."""
import pytest

from regnet_ext.models import complexity, regnet_spec


@pytest.mark.parametrize("resolution", [(True, True), (224, True)])
def test_complexity_refuses_bools_as_a_resolution(resolution):
    # (True, True) was taken as 1x1 while a lone True was refused.
    with pytest.raises(ValueError, match="^resolution: "):
        complexity(regnet_spec("RegNetX-200MF"), resolution)
