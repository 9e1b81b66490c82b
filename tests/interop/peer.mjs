// An independent libp2p Kademlia node (js-libp2p + @libp2p/kad-dht) for spegel-py's
// interoperability test: it speaks Spegel's DHT dialect (TCP + Noise + Yamux, protocol
// /spegel/kad/1.0.0, server mode, keys = CIDv1 raw of sha2-256 of the key string) so a test can
// check that spegel-py and a libp2p implementation it shares no code with find each other's
// providers.
//
// Usage: node peer.mjs [--listen /ip4/127.0.0.x/tcp/0] [--psk-file PATH]
// --psk-file: a libp2p private network key (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits);
// every connection is then protected with it by @libp2p/pnet.
// Control: one JSON object per line on stdin, one JSON reply per line on stdout.
//   {"id": 1, "cmd": "info"}                         -> {"id": 1, "ok": true, "peerId": ..., "addrs": [...]}
//   {"id": 2, "cmd": "dial", "addr": "/ip4/.../p2p/..."} -> {"id": 2, "ok": true, "peerId": ...}
//   {"id": 3, "cmd": "provide", "key": "sha256:..."}  -> {"id": 3, "ok": true, "cid": ...}
//   {"id": 4, "cmd": "findProviders", "key": ..., "timeoutMs": 5000}
//                                                     -> {"id": 4, "ok": true, "providers": [{"peerId", "addrs"}]}
//   {"id": 5, "cmd": "routingTable"}                  -> {"id": 5, "ok": true, "size": n}
//   {"id": 7, "cmd": "connections"}                   -> {"id": 7, "ok": true, "peers": [peer ids of open connections]}
//   {"id": 6, "cmd": "stop"}                          -> {"id": 6, "ok": true}, then the process exits
// The first line on stdout, unasked, is {"event": "ready", "peerId": ..., "addrs": [...]}.
// Errors answer {"id": n, "ok": false, "error": "..."}. Closing stdin stops the node too.

// Node 20 lacks Promise.withResolvers, which js-libp2p 3 uses (Node 22 has it).
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createInterface } = await import('node:readline')
const { readFileSync } = await import('node:fs')
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
const { multiaddr } = await import('@multiformats/multiaddr')
const { CID } = await import('multiformats/cid')
const raw = await import('multiformats/codecs/raw')
const { sha256 } = await import('multiformats/hashes/sha2')

const PROTOCOL = '/spegel/kad/1.0.0'

function argValue (name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

// Spegel's key derivation: the DHT key of "sha256:..." or "registry/repo:tag" is a CIDv1 with
// the raw codec whose multihash is sha2-256 of the string's UTF-8 bytes.
async function keyCid (key) {
  const digest = await sha256.digest(new TextEncoder().encode(key))
  return CID.createV1(raw.code, digest)
}

const pskFile = argValue('--psk-file', null)
const protector = pskFile == null
  ? {}
  : { connectionProtector: (await import('@libp2p/pnet')).preSharedKey({ psk: readFileSync(pskFile) }) }

const node = await createLibp2p({
  addresses: { listen: [argValue('--listen', '/ip4/127.0.0.1/tcp/0')] },
  ...protector,
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: PROTOCOL,
      clientMode: false,
      // Loopback addresses are "private"; the default mapper would drop every one of them.
      peerInfoMapper: passthroughMapper,
      allowQueryWithZeroPeers: true
    })
  }
})

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function info () {
  return { peerId: node.peerId.toString(), addrs: node.getMultiaddrs().map((a) => a.toString()) }
}

async function handle (req) {
  switch (req.cmd) {
    case 'info':
      return info()
    case 'dial': {
      const conn = await node.dial(multiaddr(req.addr), { signal: AbortSignal.timeout(req.timeoutMs ?? 10000) })
      return { peerId: conn.remotePeer.toString() }
    }
    case 'provide': {
      const cid = await keyCid(req.key)
      await drainProvide(cid, req)
      return { cid: cid.toString() }
    }
    case 'findProviders': {
      const cid = await keyCid(req.key)
      const signal = AbortSignal.timeout(req.timeoutMs ?? 5000)
      const found = new Map()
      try {
        for await (const event of node.services.dht.findProviders(cid, { signal })) {
          if (event.name !== 'PROVIDER') continue
          for (const p of event.providers) {
            found.set(p.id.toString(), p.multiaddrs.map((a) => a.toString()))
          }
          if (req.limit && found.size >= req.limit) break
        }
      } catch (err) {
        if (!signal.aborted) throw err
      }
      return { cid: cid.toString(), providers: [...found].map(([peerId, addrs]) => ({ peerId, addrs })) }
    }
    case 'routingTable':
      return { size: node.services.dht.routingTable.size }
    case 'connections':
      return { peers: node.getConnections().map((c) => c.remotePeer.toString()) }
    case 'stop':
      return {}
    default:
      throw new Error(`unknown command ${JSON.stringify(req.cmd)}`)
  }
}

async function drainProvide (cid, req) {
  const signal = AbortSignal.timeout(req.timeoutMs ?? 10000)
  for await (const event of node.services.dht.provide(cid, { signal })) {
    void event
  }
}

let stopping = false
async function stop (code) {
  if (stopping) return
  stopping = true
  await node.stop()
  process.exit(code)
}

out({ event: 'ready', ...info() })

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (!line.trim()) return
  let req
  try {
    req = JSON.parse(line)
  } catch (err) {
    out({ ok: false, error: `bad JSON: ${err.message}` })
    return
  }
  handle(req).then(
    (result) => {
      out({ id: req.id, ok: true, ...result })
      if (req.cmd === 'stop') void stop(0)
    },
    (err) => out({ id: req.id, ok: false, error: String(err?.stack ?? err) })
  )
})
lines.on('close', () => { void stop(0) })
process.on('SIGTERM', () => { void stop(0) })
