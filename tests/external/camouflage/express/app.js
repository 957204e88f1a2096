// The reference Express 4 application: what `npm install express` and the guide's
// "serving static files" example give, with nothing customised. express.static() over a
// directory, no routes, no error handler (finalhandler answers 404s), Node's http server
// defaults (keepAliveTimeout 5 s, headersTimeout 60 s, requestTimeout 300 s, 16 KiB headers).
//
//   node app.js ROOT PORT [HOST]     (HOST defaults to 127.0.0.1)
'use strict'

const express = require('express')

const [root, port, host = '127.0.0.1'] = process.argv.slice(2)
if (!root || !port) {
  console.error('usage: node app.js ROOT PORT [HOST]')
  process.exit(2)
}

const app = express()
app.use(express.static(root))
app.listen(Number(port), host, () => {
  console.log(`express ${require('express/package.json').version} on ${host}:${port}, serving ${root}`)
})
