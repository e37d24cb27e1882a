"""The names and loopback addresses of the simulated Gretel Hybrid.

Every simulated host gets its own 127.x address so a packet capture can tell them
apart (and a direct-IP connection to the foreign host is visibly its own flow).
"""

from __future__ import annotations

API = "api.gretel.cloud"
ARTIFACTS = "artifacts.gretel.cloud"
REGION = "us-west-2"
REGISTRY = f"074762682575.dkr.ecr.{REGION}.amazonaws.com"
S3_GLOBAL = "s3.amazonaws.com"
S3_REGIONAL = f"s3-{REGION}.amazonaws.com"
LAYER_BUCKET = f"prod-{REGION}-starport-layer-bucket"
LAYER_BUCKET_HOST = f"{LAYER_BUCKET}.s3.{REGION}.amazonaws.com"
CUSTOMER_BUCKET = "acme-gretel-hybrid"
CUSTOMER_BUCKET_HOST = f"{CUSTOMER_BUCKET}.s3.{REGION}.amazonaws.com"
FOREIGN = "collector.example.net"
OTHER_REGISTRY = f"123456789012.dkr.ecr.{REGION}.amazonaws.com"  # an ECR registry get_login never names
FOREIGN_BUCKET = "exfil-drop-7f3a"

# name -> default listen address; the DNS server answers these and nothing else.
DEFAULT_ADDRESSES: dict[str, str] = {
    API: "127.0.0.11",
    ARTIFACTS: "127.0.0.12",
    REGISTRY: "127.0.0.13",
    S3_GLOBAL: "127.0.0.14",
    S3_REGIONAL: "127.0.0.15",
    LAYER_BUCKET_HOST: "127.0.0.16",
    CUSTOMER_BUCKET_HOST: "127.0.0.17",
    FOREIGN: "127.0.0.18",
    OTHER_REGISTRY: "127.0.0.19",
}
DNS_ADDRESS = "127.0.0.10"

# Where the simulated worker's traffic comes from: one address per scope, so the
# proxy and the probe can attribute a connection to "pod" or "node" by client IP.
POD_IP = "127.0.2.10"
NODE_IP = "127.0.3.10"

CLUSTER_GUID = "c_2f9d0b6e4a7c41d3a8e5b1f07c6d92ab"
API_KEY = "grtu3f0c9a7e5d1b2a4c6e8f0a1b3c5d7e9f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7"
PROJECT_NAME = "hybrid-demo"
USER_EMAIL = "data.scientist@acme.example"
AGENT_EMAIL = "hybrid-agent@acme.example"
REGISTRY_REPO = "gretelai/models-tabular"
IMAGE_TAG = "v0.30.0"
APP_VERSION = "0.18.4"
IMAGE_VERSION = "2025.02.11"
