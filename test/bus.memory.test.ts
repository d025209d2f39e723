import * as BusMemory from "../src/adapters/BusMemory.ts"
import { busContract } from "./bus.contract.ts"

busContract("memory", () => BusMemory.layer)
