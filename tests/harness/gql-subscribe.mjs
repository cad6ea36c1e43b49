// A GraphQL subscription through a real client (graphql-ws over ws).
//
// usage: node gql-subscribe.mjs WS_URL QUERY COUNT
// Prints {"ready": true} once the server acknowledged the connection and the
// subscription was sent, then one JSON line per event (the whole payload),
// and exits after COUNT events, or prints {"error": ...} and exits 1.
import { createClient } from 'graphql-ws'
import WebSocket from 'ws'

const [url, query, count] = process.argv.slice(2)
let left = Number(count)
const client = createClient({ url, webSocketImpl: WebSocket, retryAttempts: 0, lazy: false })
client.on('connected', () => {
  // The subscribe message goes out right after the ack; give the server a moment.
  setTimeout(() => console.log(JSON.stringify({ ready: true })), 300)
})
client.subscribe(
  { query },
  {
    next: (payload) => {
      console.log(JSON.stringify(payload))
      if (--left <= 0) {
        client.dispose()
        process.exit(0)
      }
    },
    error: (e) => {
      console.log(JSON.stringify({ error: String(e?.message ?? JSON.stringify(e)) }))
      process.exit(1)
    },
    complete: () => process.exit(0),
  },
)
