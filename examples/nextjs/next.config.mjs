import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

/** @type {import("next").NextConfig} */
const nextConfig = {
  // voicegate-client is the repository's web/ folder, linked by npm (file:../../web): let the bundler reach it.
  transpilePackages: ["voicegate-client"],
  turbopack: { root: path.join(here, "..", "..") },
  outputFileTracingRoot: path.join(here, "..", ".."),
};

export default nextConfig;
