"""The SMS guide as sent: the item's guide plus what code appends (policy basis, centre phone, signature)."""

from __future__ import annotations

from kb.schema import ServiceItem


def sms_footer(item: ServiceItem, phone: str, signature: str) -> str:
    """What code appends to every SMS guide: the policy basis, the centre's phone and the signature."""
    documents = "；".join(basis.citation() for basis in item.policy_basis[:3])
    return f"\n依据：{documents}\n咨询电话：{phone}【{signature}】"


def compose_sms(item: ServiceItem, phone: str, signature: str) -> str:
    return item.sms.strip() + sms_footer(item, phone, signature)
