"""FunASR speech recognition: the in-process engine, the 2pass websocket protocol, its client and its server."""

from voice.funasr.decode_queue import DecodeQueue
from voice.funasr.engine import MODEL_RATE_HZ, SAMPLES_PER_CHUNK_UNIT, FunAsrEngine, FunAsrEnginePool, FunAsrStream
from voice.funasr.client import FunAsrServerEngine, FunAsrServerStream
from voice.funasr.loading import is_hub_name, quiet_funasr
from voice.funasr.protocol import AsrProtocolError
from voice.funasr.server import FunAsrWebsocketServer, run_asr_server

__all__ = [
    "MODEL_RATE_HZ", "SAMPLES_PER_CHUNK_UNIT", "AsrProtocolError", "DecodeQueue", "FunAsrEngine", "FunAsrEnginePool",
    "FunAsrServerEngine", "FunAsrServerStream", "FunAsrStream", "FunAsrWebsocketServer", "is_hub_name", "quiet_funasr",
    "run_asr_server",
]
