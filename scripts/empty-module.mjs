// Stands in for Node-only packages that a bundle references but never calls (see node-run.mjs).
export default {};
