"""Fuzz the HTTP delivery-report parsers (`HttpReportParser.parse_reports` of Kannel, Aliyun and Tencent).

Input: one callback. For Aliyun and Tencent it is the POSTed body (a JSON array); for Kannel the dlr-url query string
(decoded as Starlette decodes `request.query_params`). Property: a list of typed `DeliveryReport`s or `ReportError`
(the route's 400); any other exception is a crash (the route would answer 500).

    python tests/fuzz/fuzz_sms_reports.py -max_total_time=30 CORPUS_COPY tests/fuzz/corpus/sms_reports
"""

import sys
from urllib.parse import parse_qsl

import atheris
from json_mutator import mutate_json

with atheris.instrument_imports(include=["telephony"]):
    from telephony.sms.base import DeliveryReport, DeliveryState, ReportError, ReportRequest
    from telephony.sms.gateways.aliyun import AliyunSmsGateway
    from telephony.sms.gateways.kannel import KannelGateway
    from telephony.sms.gateways.tencent import TencentSmsGateway

PARSERS = (AliyunSmsGateway("testId", "testSecret", "测试社保"),
           TencentSmsGateway("testId", "testKey", "1400000000", "测试社保"),
           KannelGateway("http://127.0.0.1:13013/cgi-bin/sendsms", "hotline", "secret"))


def test_one_input(data: bytes) -> None:
    query = dict(parse_qsl(data.decode("latin-1"), keep_blank_values=True))
    request = ReportRequest("POST", query, data, "application/json")
    for parser in PARSERS:
        try:
            reports = parser.parse_reports(request)
        except ReportError:
            continue
        assert isinstance(reports, list)
        for report in reports:
            assert isinstance(report, DeliveryReport) and isinstance(report.state, DeliveryState)
            assert isinstance(report.message_id, str) and report.message_id
            assert report.reference is None or isinstance(report.reference, str)
            assert report.error_code is None or isinstance(report.error_code, str)
            assert isinstance(report.detail, str)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input, custom_mutator=mutate_json)
    atheris.Fuzz()
