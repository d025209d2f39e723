import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Suites start real servers (PostgreSQL, nats-server, sshd) on free ports; two workers fit two cores.
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 180_000,
    hookTimeout: 120_000,
    setupFiles: ["test/setup.ts"]
  }
})
