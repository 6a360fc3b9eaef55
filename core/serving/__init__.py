"""Serving: the @service/@api decorators, the batching loop, codecs, the HTTP app and client."""
