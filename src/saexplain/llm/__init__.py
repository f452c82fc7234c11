"""One client over OpenAI-compatible servers and in-process models (llama-cpp-python, transformers)."""

from saexplain.llm import inprocess, openai_compat  # noqa: F401  (register the backends)
from saexplain.llm.base import Completion, LLMError, LLMParseError, Request, RetryableError, Usage
from saexplain.llm.client import LLM, LLMConfig, metered, parse_json

__all__ = [
           "LLM",
           "Completion",
           "LLMConfig",
           "LLMError",
           "LLMParseError",
           "metered",
           "Request",
           "RetryableError",
           "Usage",
           "parse_json",
]
