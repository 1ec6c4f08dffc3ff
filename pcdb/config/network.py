"""The network (§2.3.1, R-SEC-5): the VNet, the subnet, and the allowed client subnets.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from pcdb.config.types import Cidr, Model, NetworkName


class Vnet(Model):
    name: NetworkName
    address_prefix: Cidr


class Subnet(Model):
    name: NetworkName
    address_prefix: Cidr
    delegation: str


class WiderOverride(Model):
    """A network rule wider than the plan's application subnets, kept on purpose: why, and which
    approver agreed (recorded in the plan and the install's ledger row)."""

    reason: str = Field(min_length=10, description="why this wider rule is needed")
    approved_by: str = Field(description="the approver (install.approval.approvers) who agreed")


class AllowedSubnet(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
    cidr: Cidr
    description: str = ""
    wider: WiderOverride | None = Field(None, description="production: a rule wider than one application subnet "
                                                          "(/24) inside the VNet needs this recorded override")


class Network(Model):
    mode: Literal["vnet", "public"] = Field(description="vnet: delegated subnet, access by NSG (C-2); "
                                                        "public: firewall rules")
    vnet: Vnet | None = None
    subnet: Subnet | None = None
    private_dns_zone: str | None = Field(None, max_length=253, pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
                                         description="a DNS zone name such as x.private.postgres.database.azure.com")
    allowed_subnets: list[AllowedSubnet]

    @model_validator(mode="after")
    def _subnet_inside_vnet(self) -> Network:
        if self.mode == "vnet" and not (self.vnet and self.subnet and self.private_dns_zone):
            raise ValueError("network mode 'vnet' needs vnet, subnet and private_dns_zone")
        if self.vnet and self.subnet:
            outer = ipaddress.ip_network(self.vnet.address_prefix)
            inner = ipaddress.ip_network(self.subnet.address_prefix)
            if not inner.subnet_of(outer):
                raise ValueError(f"subnet {inner} is not inside the VNet {outer}")
        return self
