/** node.yaml for agentless OpenSSH nodes: what `tctl create` accepts, and where it points at mistakes. */
import { Either } from "effect"
import { parseAllDocuments } from "yaml"
import { describe, expect, it } from "vitest"
import { documentKinds, parseNodes, toResource } from "../src/domain/AgentlessNode.ts"

const doc = (spec: ReadonlyArray<string>) =>
  ["kind: node", "version: v2", "metadata:", "  name: web-1", "  labels: { env: prod }", "spec:", ...spec, ""].join("\n")

describe("parseNodes", () => {
  it("reads nodes, one per document, with labels and defaults", () => {
    const text = doc(["  addr: 10.0.0.5:22", "  host_key: ssh-ed25519 AAAA"]) + "---\n" + doc(["  addr: '[::1]:2222'", "  hostname: web.internal", "  host_key: k"]).replace("web-1", "web-2")
    const nodes = Either.getOrThrow(parseNodes(text, "node.yaml"))
    expect(nodes.map((n) => [n.metadata.name, n.spec.addr, n.spec.hostname, n.metadata.labels])).toEqual([
      ["web-1", "10.0.0.5:22", undefined, { env: "prod" }],
      ["web-2", "[::1]:2222", "web.internal", { env: "prod" }]
    ])
    expect(toResource({ name: "web-1", addr: "10.0.0.5:22", hostname: "web-1", labels: {}, host_key: "ssh-ed25519 AAAA", host_cert: "cert" }).spec.host_key).toBe("cert")
  })

  it("names the line and field of a mistake", () => {
    const bad = (spec: ReadonlyArray<string>) => {
      const r = parseNodes(doc(spec), "node.yaml")
      if (Either.isRight(r)) throw new Error("accepted")
      return r.left.message
    }
    expect(bad(["  addr: 10.0.0.5", "  host_key: k"])).toMatch(/^node\.yaml: line 7: spec\.addr: expected HOST:PORT/)
    expect(bad(["  addr: 10.0.0.5:70000", "  host_key: k"])).toMatch(/spec\.addr: the port must be 1-65535/)
    expect(bad(["  addr: h:22"])).toMatch(/spec\.host_key/)
    expect(bad(["  addr: h:22", "  host_key: k", "  adr: typo"])).toMatch(/line 9: spec\.adr: unknown key/)
  })

  it("tells tctl create which kinds a file holds", () => {
    const docs = parseAllDocuments("kind: node\n---\nkind: role\n---\n- not a mapping\n").flatMap((d) => ("toJS" in d ? [d.toJS() as unknown] : []))
    expect(documentKinds(docs)).toEqual(["node", "role", ""])
  })
})
