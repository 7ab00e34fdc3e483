"""The original's walkthrough (SPEC §5, §8): one configuration, one expected environment."""

from __future__ import annotations

#: node minikube: one widget and two thingamajigs (the second pod of the test
#: deployment must find no widget left)
CONFIG = """\
deviceMapping:
  - hosts: [minikube]
    devices:
      - {resourceName: example.com/widget, instanceID: "0001", env: {IP: 192.168.0.200, PORT: 12345}}
      - {resourceName: example.com/thingamajig, instanceID: A1234}
      - {resourceName: example.com/thingamajig, instanceID: B5678}
"""

#: exactly what a container given widget 0001 and thingamajig A1234 gets (SPEC §5)
ENV = {
    "EXAMPLECOM_WIDGET_DEV0_ID": "0001",
    "EXAMPLECOM_WIDGET_DEV0_IP": "192.168.0.200",
    "EXAMPLECOM_WIDGET_DEV0_PORT": "12345",
    "EXAMPLECOM_WIDGET_DEV0_TYPE": "example.com/widget",
    "EXAMPLECOM_WIDGET_ID": "0001",
    "EXAMPLECOM_WIDGET_IP": "192.168.0.200",
    "EXAMPLECOM_WIDGET_PORT": "12345",
    "EXAMPLECOM_WIDGET_TYPE": "example.com/widget",
    "EXAMPLECOM_WIDGET_NUM_DEVICES": "1",
    "EXAMPLECOM_THINGAMAJIG_DEV0_ID": "A1234",
    "EXAMPLECOM_THINGAMAJIG_DEV0_TYPE": "example.com/thingamajig",
    "EXAMPLECOM_THINGAMAJIG_ID": "A1234",
    "EXAMPLECOM_THINGAMAJIG_TYPE": "example.com/thingamajig",
    "EXAMPLECOM_THINGAMAJIG_NUM_DEVICES": "1",
}
