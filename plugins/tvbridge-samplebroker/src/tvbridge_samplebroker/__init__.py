"""tvbridge-samplebroker: a sample third-party tvbridge broker plugin for the "SampleX" HTTP API.

The entry point `sample = "tvbridge_samplebroker:SampleBroker"` (group `tvbridge.brokers`) points here.
"""

from tvbridge_samplebroker.broker import SampleBroker, SampleSettings

__all__ = ["SampleBroker", "SampleSettings"]
__version__ = "0.1.0"
