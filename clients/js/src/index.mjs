// edgepush-client: the codec of the edgepush wire protocol and a follower that
// stays subscribed across reconnects. See README.md.
export { decodeAll, encodeClient, DecodeError } from './codec.mjs';
export { Follower, SUBPROTOCOL, backoffDelay, withToken } from './follower.mjs';
