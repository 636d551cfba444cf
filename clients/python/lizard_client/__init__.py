"""Python client of lizard-server, with the gRPC stubs shipped (no protoc needed).

    import sys; sys.path.insert(0, "clients/python")      # or PYTHONPATH=clients/python
    from lizard_client import Client, pb
    client = Client("127.0.0.1:50051")
    print(client.complete("Once upon a time", max_new_tokens=32))

`pb` holds the messages and `pbg` the generated stub (`pbg.LizardStub`) for everything the API
offers; `Client` wraps the common calls. Needs grpcio and protobuf (Debian: python3-grpcio).
The stubs are generated from proto/ by tools/gen_python_client.sh.
"""
import grpc

from . import lizard_pb2 as pb
from . import lizard_pb2_grpc as pbg

__all__ = ["Client", "pb", "pbg"]


class Client:
    """A channel to one lizard-server. `api_key` is sent as `authorization: Bearer <key>`;
    `root_certificates` (PEM bytes) turns on TLS; `client_certificate`/`client_key` (PEM bytes)
    add a client certificate for mutual TLS."""

    def __init__(self, address="127.0.0.1:50051", api_key=None, root_certificates=None,
                 client_certificate=None, client_key=None):
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates, client_key,
                                                       client_certificate)
            self.channel = grpc.secure_channel(address, credentials)
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = pbg.LizardStub(self.channel)
        self._metadata = [("authorization", "Bearer " + api_key)] if api_key else None

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def generate(self, text=None, token_ids=None, session_id="", max_new_tokens=None,
                 temperature=0.0, top_p=None, top_k=0, seed=None, stop=(), logprobs=0,
                 ignore_eos=False, timeout=None):
        """Streams GenerateResponse messages (text deltas, token ids; the last one has
        finish_reason and usage)."""
        sampling = pb.SamplingParams(temperature=temperature, top_k=top_k)
        if top_p is not None:
            sampling.top_p = top_p
        if seed is not None:
            sampling.seed = seed
        stopping = pb.StoppingCriteria(stop_strings=list(stop), ignore_eos=ignore_eos)
        if max_new_tokens is not None:
            stopping.max_new_tokens = max_new_tokens
        request = pb.GenerateRequest(session_id=session_id, sampling=sampling, stopping=stopping,
                                     logprobs=logprobs)
        if token_ids is not None:
            request.token_ids.ids.extend(token_ids)
        else:
            request.text = text
        return self.stub.Generate(request, timeout=timeout, metadata=self._metadata)

    def complete(self, text=None, **kwargs):
        """The whole generated text of one request."""
        return "".join(r.text for r in self.generate(text, **kwargs))

    def create_session(self, text=None, token_ids=None, ttl_seconds=None):
        request = pb.CreateSessionRequest()
        if token_ids is not None:
            request.token_ids.ids.extend(token_ids)
        elif text is not None:
            request.text = text
        if ttl_seconds is not None:
            request.ttl_seconds = ttl_seconds
        return self.stub.CreateSession(request, metadata=self._metadata)

    def get_session(self, session_id):
        return self.stub.GetSession(pb.GetSessionRequest(session_id=session_id),
                                    metadata=self._metadata)

    def fork_session(self, session_id):
        return self.stub.ForkSession(pb.ForkSessionRequest(session_id=session_id),
                                     metadata=self._metadata)

    def delete_session(self, session_id):
        self.stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id),
                                metadata=self._metadata)

    def model_info(self):
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=self._metadata)
